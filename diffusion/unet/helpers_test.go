package unet

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

// Fixture tolerances (the READMEs of sd2/unet and sd2/controlnet).
const (
	interAtol = 2e-5
	outAtol   = 1e-5
	rtol      = 1e-5
)

// tapRecorder keeps an alias of every tapped tensor, in forward order.
type tapRecorder struct {
	names []string
	ts    map[string]*torch.Tensor
}

func newTapRecorder(t *testing.T) *tapRecorder {
	r := &tapRecorder{ts: map[string]*torch.Tensor{}}
	t.Cleanup(func() {
		for _, x := range r.ts {
			x.Close()
		}
	})
	return r
}

func (r *tapRecorder) tap(name string, x *torch.Tensor) {
	if old, ok := r.ts[name]; ok {
		old.Close()
	} else {
		r.names = append(r.names, name)
	}
	r.ts[name] = torch.Unscope(x.Alias())
}

// compare checks every recorded tensor that ref holds (under prefix+name),
// in forward order, and returns the reference names it covered.
func (r *tapRecorder) compare(t *testing.T, ref map[string]*torch.Tensor, prefix string, atol float64) map[string]bool {
	t.Helper()
	seen := map[string]bool{}
	for _, n := range r.names {
		want, ok := ref[prefix+n]
		if !ok {
			continue
		}
		testutil.AssertClose(t, prefix+n, r.ts[n], want, atol, rtol)
		seen[prefix+n] = true
	}
	return seen
}

// onDev returns x on dev (x itself on the CPU); the copy is closed at the
// end of the test.
func onDev(t *testing.T, x *torch.Tensor, dev torch.Device) *torch.Tensor {
	if dev == torch.CPU || x == nil {
		return x
	}
	y := torch.Unscope(x.ToDevice(dev))
	t.Cleanup(y.Close)
	return y
}

// indexed collects ref[prefix+"0"], ref[prefix+"1"], … on dev.
func indexed(t *testing.T, ref map[string]*torch.Tensor, prefix string, dev torch.Device) []*torch.Tensor {
	var out []*torch.Tensor
	for i := 0; ; i++ {
		x, ok := ref[prefix+strconv.Itoa(i)]
		if !ok {
			return out
		}
		out = append(out, onDev(t, x, dev))
	}
}

// requireCovered fails when a reference tensor other than the inputs was
// not compared.
func requireCovered(t *testing.T, ref map[string]*torch.Tensor, seen map[string]bool, skip func(string) bool) {
	t.Helper()
	var missed []string
	for k := range ref {
		if !seen[k] && !skip(k) {
			missed = append(missed, k)
		}
	}
	sort.Strings(missed)
	require.Empty(t, missed, "reference tensors never produced")
}

func hasPrefix(prefixes ...string) func(string) bool {
	return func(k string) bool {
		for _, p := range prefixes {
			if k == p || strings.HasPrefix(k, p) {
				return true
			}
		}
		return false
	}
}

func shapeString(s []int64) string { return fmt.Sprint(s) }

// attentionPath is one way the fixture tests run attention: as the model
// chose for its device, or the other way: libtorch's fused kernels (what
// CUDA runs; libtorch 1.x computes the math order in one piece there) where
// the model chose the exact math order (the CPU), and the math order on CUDA.
type attentionPath struct {
	suffix string
	use    func(o *attnOpts)
}

var attentionPaths = []attentionPath{
	{"", func(*attnOpts) {}},
	{"/other_attention", func(o *attnOpts) { o.math = !o.math }},
}
