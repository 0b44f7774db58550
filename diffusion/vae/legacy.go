package vae

import (
	"regexp"
	"sort"

	"github.com/dp2osr/dp2o/torch"
	"github.com/dp2osr/dp2o/torch/nn"
)

// legacyAttnRE matches the attention names of older diffusers-format
// checkpoints (query, key, value, proj_attn).
var legacyAttnRE = regexp.MustCompile(`^(.*\.attentions\.\d+\.)(query|key|value|proj_attn)\.(weight|bias)$`)

var legacyAttnNames = map[string]string{
	"query":     "to_q",
	"key":       "to_k",
	"value":     "to_v",
	"proj_attn": "to_out.0",
}

// LegacyAttentionKeys wraps src so that the mid-block attention weights of
// older diffusers-format VAE checkpoints (…attentions.0.query/key/value/
// proj_attn.weight|bias) appear under their current names (to_q, to_k, to_v,
// to_out.0), as diffusers renames them at load time. The shapes are the
// same. A source without such keys is returned unchanged. Closing the
// wrapper closes src.
func LegacyAttentionKeys(src nn.Source) nn.Source {
	toOld := map[string]string{}
	for _, k := range src.Names() {
		m := legacyAttnRE.FindStringSubmatch(k)
		if m == nil {
			continue
		}
		toOld[m[1]+legacyAttnNames[m[2]]+"."+m[3]] = k
	}
	if len(toOld) == 0 {
		return src
	}
	fromOld := make(map[string]string, len(toOld))
	for n, o := range toOld {
		fromOld[o] = n
	}
	return &renamedSource{Source: src, toOld: toOld, fromOld: fromOld}
}

// renamedSource presents some keys of a source under new names.
type renamedSource struct {
	nn.Source
	toOld   map[string]string // new name → name in the source
	fromOld map[string]string // name in the source → new name
}

func (r *renamedSource) old(key string) string {
	if o, ok := r.toOld[key]; ok {
		return o
	}
	return key
}

// Names lists every key under its new name, sorted.
func (r *renamedSource) Names() []string {
	names := r.Source.Names()
	out := make([]string, len(names))
	for i, k := range names {
		if n, ok := r.fromOld[k]; ok {
			k = n
		}
		out[i] = k
	}
	sort.Strings(out)
	return out
}

// Meta returns the shape and dtype of key (a new name).
func (r *renamedSource) Meta(key string) ([]int64, torch.DType, bool) {
	if _, stale := r.fromOld[key]; stale {
		return nil, 0, false
	}
	return r.Source.Meta(r.old(key))
}

// Load returns key (a new name) as a new CPU tensor.
func (r *renamedSource) Load(key string) (*torch.Tensor, error) {
	return r.Source.Load(r.old(key))
}
