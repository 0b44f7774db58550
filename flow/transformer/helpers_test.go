package transformer

import (
	"fmt"
	"sort"
	"strconv"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/dp2osr/dp2o/internal/testutil"
	"github.com/dp2osr/dp2o/torch"
)

// Fixture tolerances (flux/transformer and flux/controlnet READMEs).
const (
	transformerAtol = 2e-5
	ropeAtol        = 1e-6
	controlnetAtol  = 1e-5
)

// tapRecorder keeps an alias of every tapped tensor, in forward order.
type tapRecorder struct {
	names []string
	ts    map[string]*torch.Tensor
}

func newTapRecorder(t testing.TB) *tapRecorder {
	r := &tapRecorder{ts: map[string]*torch.Tensor{}}
	t.Cleanup(r.close)
	return r
}

func (r *tapRecorder) close() {
	for _, x := range r.ts {
		x.Close()
	}
	r.ts = map[string]*torch.Tensor{}
	r.names = nil
}

func (r *tapRecorder) tap(name string, x *torch.Tensor) {
	if old, ok := r.ts[name]; ok {
		old.Close()
	} else {
		r.names = append(r.names, name)
	}
	r.ts[name] = torch.Unscope(x.Alias())
}

// compare checks, in forward order, every recorded tensor the reference
// holds under prefix+name (so that a failure names the first diverging
// one), and returns the reference names it covered.
func (r *tapRecorder) compare(t *testing.T, ref map[string]*torch.Tensor, prefix string, atol func(string) float64) map[string]bool {
	t.Helper()
	seen := map[string]bool{}
	for _, n := range r.names {
		want, ok := ref[prefix+n]
		if !ok {
			continue
		}
		testutil.AssertClose(t, prefix+n, r.ts[n], want, atol(n), 0)
		seen[prefix+n] = true
	}
	return seen
}

// requireCovered fails if a reference tensor under prefix was neither
// compared nor used as an input.
func requireCovered(t *testing.T, ref map[string]*torch.Tensor, prefix string, seen map[string]bool) {
	t.Helper()
	for k := range ref {
		if strings.HasPrefix(k, prefix) && !seen[k] {
			t.Errorf("reference tensor %s was not checked", k)
		}
	}
}

// indexed returns ref[prefix+"0"], ref[prefix+"1"], … (as many as exist,
// by number), marking them seen.
func indexed(t *testing.T, ref map[string]*torch.Tensor, prefix string, seen map[string]bool) []*torch.Tensor {
	t.Helper()
	type item struct {
		i int
		k string
	}
	var items []item
	for k := range ref {
		rest, ok := strings.CutPrefix(k, prefix)
		if !ok {
			continue
		}
		i, err := strconv.Atoi(rest)
		require.NoError(t, err, k)
		items = append(items, item{i, k})
	}
	sort.Slice(items, func(a, b int) bool { return items[a].i < items[b].i })
	var out []*torch.Tensor
	for j, it := range items {
		require.Equal(t, j, it.i, "%s: indices must be 0…n-1", prefix)
		out = append(out, ref[it.k])
		seen[it.k] = true
	}
	return out
}

// cases lists the prefixes p of an io file that hold p+".output".
func cases(ref map[string]*torch.Tensor, leaf string) []string {
	var out []string
	for k := range ref {
		if p, ok := strings.CutSuffix(k, "."+leaf); ok && !strings.Contains(p, ".") {
			out = append(out, p)
		}
	}
	sort.Strings(out)
	return out
}

// input is the fixture's model input (the shared tensors of the io file).
func input(ref map[string]*torch.Tensor) Input {
	return Input{
		HiddenStates:        ref["hidden_states"],
		EncoderHiddenStates: ref["encoder_hidden_states"],
		PooledProjections:   ref["pooled_projections"],
		Timestep:            ref["timestep"],
		Guidance:            ref["guidance"],
		ImgIDs:              ref["img_ids"],
		TxtIDs:              ref["txt_ids"],
	}
}

var inputNames = []string{"hidden_states", "encoder_hidden_states", "pooled_projections", "timestep", "guidance", "img_ids", "txt_ids"}

func markInputs(seen map[string]bool) {
	for _, n := range inputNames {
		seen[n] = true
	}
}

func atolFor(base float64) func(string) float64 {
	return func(name string) float64 {
		if strings.HasPrefix(name, "pos_embed.") {
			return ropeAtol
		}
		return base
	}
}

func describe(ts []*torch.Tensor) string {
	var s []string
	for _, t := range ts {
		s = append(s, fmt.Sprint(t.Shape()))
	}
	return strings.Join(s, ", ")
}

// withOtherAttention switches the attention of every given block to the
// other path until the test ends: libtorch's fused kernels (what CUDA runs;
// libtorch 1.x computes the math order in one piece there) where the model
// chose the exact math order (the CPU), and the math order on CUDA.
func withOtherAttention(t testing.TB, doubles []*doubleBlock, singles []*singleBlock) {
	var attns []*attention
	for _, b := range doubles {
		attns = append(attns, b.attn)
	}
	for _, b := range singles {
		attns = append(attns, b.attn)
	}
	for _, a := range attns {
		a.math = !a.math
	}
	t.Cleanup(func() {
		for _, a := range attns {
			a.math = !a.math
		}
	})
}
