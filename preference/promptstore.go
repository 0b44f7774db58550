package preference

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"

	"github.com/dp2osr/dp2o/torch"
	"github.com/dp2osr/dp2o/torch/nn"
	"github.com/dp2osr/dp2o/torch/optim"
	"github.com/dp2osr/dp2o/torch/safetensors"
)

// PromptStore keeps prompt embeddings in a folder, one safetensors file per
// prompt ("text", and "pooled" for C-FLUX, in the encoders' dtype) named by
// the prompt's SHA-256, so that training can encode every prompt once,
// before it starts, and then free the text encoders, as diffusers' training
// recipes do (for C-FLUX, T5-XXL and CLIP-L: 9.8 GB of GPU memory in
// bfloat16). The folder's encoders.json holds the fingerprint and dtype of
// the text encoders that made it: a store of other encoders, or of the
// same in another dtype, is refused.
type PromptStore struct {
	Dir string
}

// promptStoreKey is encoders.json.
type promptStoreKey struct {
	Kind     string        `json:"kind"`
	Encoders []Fingerprint `json:"encoders"`
	// DTypes are the encoders' (a fingerprint reads the weights as
	// float32: the same file loaded in bfloat16 and in float32 encodes
	// differently).
	DTypes []string `json:"dtypes"`
}

// OpenPromptStore opens (creating it) the store in dir for the text
// encoders whose weights are encoders (one list per encoder).
func OpenPromptStore(dir, kind string, encoders ...[]optim.Param) (*PromptStore, error) {
	key := promptStoreKey{Kind: kind}
	for _, ps := range encoders {
		fp, err := FingerprintOf(ps)
		if err != nil {
			return nil, fmt.Errorf("preference: prompt store: %w", err)
		}
		key.Encoders = append(key.Encoders, fp)
		dt := "none"
		if len(ps) > 0 {
			dt = ps[0].Tensor.DType().String()
		}
		key.DTypes = append(key.DTypes, dt)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("preference: prompt store: %w", err)
	}
	path := filepath.Join(dir, "encoders.json")
	want, err := json.MarshalIndent(key, "", "  ")
	if err != nil {
		return nil, err
	}
	switch have, err := os.ReadFile(path); {
	case errors.Is(err, os.ErrNotExist):
		if err := WriteFileAtomic(path, want); err != nil {
			return nil, fmt.Errorf("preference: prompt store: %w", err)
		}
	case err != nil:
		return nil, fmt.Errorf("preference: prompt store: %w", err)
	default:
		var k promptStoreKey
		if err := json.Unmarshal(have, &k); err != nil {
			return nil, fmt.Errorf("preference: prompt store %s: %w", path, err)
		}
		if k.Kind != key.Kind || !slices.Equal(k.Encoders, key.Encoders) || !slices.Equal(k.DTypes, key.DTypes) {
			return nil, fmt.Errorf("preference: prompt store %s holds the embeddings of other text encoders (%s, %v); use another folder", dir, k.Kind, k.DTypes)
		}
	}
	return &PromptStore{Dir: dir}, nil
}

func (s *PromptStore) path(prompt string) string {
	h := sha256.Sum256([]byte(prompt))
	return filepath.Join(s.Dir, hex.EncodeToString(h[:])+".safetensors")
}

// Has reports whether prompt's embeddings are in the store.
func (s *PromptStore) Has(prompt string) bool {
	_, err := os.Stat(s.path(prompt))
	return err == nil
}

// Put writes prompt's embeddings (pooled may be nil), atomically.
func (s *PromptStore) Put(prompt string, text, pooled *torch.Tensor) (err error) {
	defer torch.Recover(&err)
	var ts []safetensors.Tensor
	for _, e := range []struct {
		name string
		t    *torch.Tensor
	}{{"text", text}, {"pooled", pooled}} {
		if e.t == nil {
			continue
		}
		c := torch.Scoped(func() *torch.Tensor { return e.t.Detach().ToDevice(torch.CPU).Contiguous() })
		ts = append(ts, safetensors.Tensor{Name: e.name, DType: safetensors.DType(c.DType().SafetensorsCode()), Shape: c.Shape(), Data: c.Bytes()})
		c.Close()
	}
	if err := safetensors.Save(s.path(prompt), ts, map[string]string{"prompt": prompt}); err != nil {
		return fmt.Errorf("preference: prompt store: %w", err)
	}
	return nil
}

// Get reads prompt's embeddings (pooled nil when the store has none) on
// the CPU. The caller closes them.
func (s *PromptStore) Get(prompt string) (text, pooled *torch.Tensor, err error) {
	src, err := nn.OpenSafetensors(s.path(prompt))
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, nil, fmt.Errorf("preference: prompt store %s has no embedding of %q (not precomputed)", s.Dir, prompt)
		}
		return nil, nil, fmt.Errorf("preference: prompt store: %w", err)
	}
	defer src.Close()
	if text, err = src.Load("text"); err != nil {
		return nil, nil, fmt.Errorf("preference: prompt store: %w", err)
	}
	if _, _, ok := src.Meta("pooled"); ok {
		if pooled, err = src.Load("pooled"); err != nil {
			text.Close()
			return nil, nil, fmt.Errorf("preference: prompt store: %w", err)
		}
	}
	return text, pooled, nil
}

// Encoder is a PromptEncoder that reads the store.
func (s *PromptStore) Encoder() PromptEncoder { return s.Get }

// Fill encodes with enc the prompts not yet in the store, taking the
// prompts i ≡ rank (mod world) of the list (world ≤ 1: all of them), and
// returns how many it encoded.
func (s *PromptStore) Fill(prompts []string, enc PromptEncoder, rank, world int) (n int, err error) {
	if world < 1 {
		world, rank = 1, 0
	}
	for i, p := range prompts {
		if i%world != rank || s.Has(p) {
			continue
		}
		var text, pooled *torch.Tensor
		torch.NoGrad(func() { text, pooled, err = enc(p) })
		if err == nil {
			err = s.Put(p, text, pooled)
		}
		text.Close()
		pooled.Close()
		if err != nil {
			return n, fmt.Errorf("preference: prompt store: prompt %q: %w", p, err)
		}
		n++
	}
	return n, nil
}

// Missing lists the prompts not in the store.
func (s *PromptStore) Missing(prompts []string) []string {
	var out []string
	for _, p := range prompts {
		if !s.Has(p) {
			out = append(out, p)
		}
	}
	return out
}

// Prompts lists the distinct prompts of the pairs' groups, sorted.
func (pf *PairFile) Prompts() []string {
	seen := map[string]bool{}
	var out []string
	for i := range pf.Pairs {
		g := pf.Pairs[i].Group
		if g < 0 || g >= len(pf.Groups) || seen[pf.Groups[g].Prompt] {
			continue
		}
		seen[pf.Groups[g].Prompt] = true
		out = append(out, pf.Groups[g].Prompt)
	}
	slices.Sort(out)
	return out
}
