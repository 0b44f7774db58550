package torch_test

import (
	"math"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/dp2osr/dp2o/internal/testutil"
	"github.com/dp2osr/dp2o/torch"
)

// TestMaxPool2dPaths checks that MaxPool2d gives libtorch's values on every
// path: a dense float32 CPU input that needs no gradient goes through
// oneDNN's pooling (when libtorch has it), and DP2O_MKLDNN=0 keeps
// libtorch's own kernel; the two must agree bit for bit, padding included,
// and a NaN in a window must come out as libtorch gives it.
func TestMaxPool2dPaths(t *testing.T) {
	testutil.NoLeak(t)
	gen, err := torch.NewGenerator(torch.CPU, 7)
	require.NoError(t, err)
	pool := func(x *torch.Tensor, k, s, p int64, mkldnn bool) []float32 {
		if !mkldnn {
			t.Setenv("DP2O_MKLDNN", "0")
			defer t.Setenv("DP2O_MKLDNN", "")
		}
		return torch.Scoped(func() *torch.Tensor {
			return torch.MaxPool2d(x, []int64{k, k}, []int64{s, s}, []int64{p, p})
		}).Float32s()
	}
	same := func(name string, a, b []float32) {
		require.Len(t, a, len(b), name)
		for i := range a {
			if math.IsNaN(float64(a[i])) != math.IsNaN(float64(b[i])) || (!math.IsNaN(float64(a[i])) && a[i] != b[i]) {
				t.Fatalf("%s: element %d: %v, libtorch's kernel %v", name, i, a[i], b[i])
			}
		}
	}
	s := torch.NewScope()
	defer s.Close()
	for _, c := range []struct {
		shape   []int64
		k, s, p int64
	}{
		{[]int64{2, 64, 33, 31}, 3, 2, 1}, // ResNet's stem pooling, odd sizes
		{[]int64{1, 3, 17, 16}, 2, 2, 0},  // VGG's
		{[]int64{3, 8, 9, 9}, 3, 1, 1},
		{[]int64{1, 1, 5, 7}, 3, 2, 1},
	} {
		x := torch.Randn(c.shape, gen, torch.Float32, torch.CPU).MulScalar(3)
		same("dense", pool(x, c.k, c.s, c.p, true), pool(x, c.k, c.s, c.p, false))
		cl := x.ContiguousChannelsLast()
		same("channels-last", pool(cl, c.k, c.s, c.p, true), pool(x, c.k, c.s, c.p, false))
	}
	x := torch.Randn([]int64{1, 2, 6, 6}, gen, torch.Float32, torch.CPU)
	x.Narrow(1, 0, 1).Narrow(2, 2, 1).Narrow(3, 2, 1).Fill_(math.NaN())
	got := pool(x, 3, 2, 1, true)
	same("NaN", got, pool(x, 3, 2, 1, false))
	require.True(t, math.IsNaN(float64(got[4])), "the window over the NaN: %v", got)
}
