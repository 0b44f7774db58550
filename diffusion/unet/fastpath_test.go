package unet

import (
	"math"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/dp2osr/dp2o/internal/testutil"
	"github.com/dp2osr/dp2o/torch"
)

// TestFastPathsMatchPlain checks the fused CPU inference ops the blocks use
// (torch.FusedAttention, GEGLUFeedForward, FastLinear) against their plain
// path, which they take when autograd records: the same values up to
// rounding, and the same NaN and inf where the input holds them (the
// XNNPACK kernels clamp a NaN to -inf, which the ops must not let through).
func TestFastPathsMatchPlain(t *testing.T) {
	testutil.NoLeak(t)
	t.Logf("XNNPACK fast paths available: %v", torch.FastPathAvailable())
	gen, err := torch.NewGenerator(torch.CPU, 1)
	require.NoError(t, err)
	s := torch.NewScope()
	defer s.Close()
	rnd := func(sh ...int64) *torch.Tensor { return torch.Randn(sh, gen, torch.Float32, torch.CPU) }
	x, ctx := rnd(2, 64, 12), rnd(2, 77, 32)
	wq, wk, wv, wo, bo := rnd(12, 12), rnd(12, 32), rnd(12, 32), rnd(12, 12), rnd(12)
	wk1, wv1 := rnd(12, 12), rnd(12, 12)
	w1, b1, w2, b2 := rnd(96, 12), rnd(96), rnd(12, 48), rnd(12)

	check := func(name string, f func() *torch.Tensor) {
		var fast, plain *torch.Tensor
		torch.NoGrad(func() { fast = f() })
		torch.EnableGrad(func() {
			x.SetRequiresGrad(true) // autograd records: the plain path
			defer x.SetRequiresGrad(false)
			plain = f().Detach()
		})
		nan := func(t *torch.Tensor) float64 { return t.Isnan().Sum().Item() }
		bad := func(t *torch.Tensor) float64 { return t.Isfinite().LogicalNot().Sum().Item() }
		require.Equal(t, nan(plain), nan(fast), "%s: NaN count", name)
		require.Equal(t, bad(plain), bad(fast), "%s: non-finite count", name)
		if bad(plain) == 0 {
			rel := fast.Sub(plain).Abs().Max().Item() / plain.Abs().Max().Item()
			require.Less(t, rel, 1e-5, "%s: relative difference", name)
		}
	}
	all := func(tag string) {
		check(tag+"self-attention", func() *torch.Tensor { return torch.FusedAttention(x, nil, wq, wk1, wv1, wo, bo, 3) })
		check(tag+"cross-attention", func() *torch.Tensor { return torch.FusedAttention(x, ctx, wq, wk, wv, wo, bo, 3) })
		check(tag+"cross-attention, 2 heads, no bias", func() *torch.Tensor { return torch.FusedAttention(x, ctx, wq, wk, wv, wo, nil, 2) })
		check(tag+"feed-forward", func() *torch.Tensor { return torch.GEGLUFeedForward(x, w1, b1, w2, b2) })
		check(tag+"linear", func() *torch.Tensor { return torch.FastLinear(x, w1, b1) })
	}
	all("")
	finite := x
	x = x.Clone()
	torch.NoGrad(func() { x.Select(0, 1).Select(0, 5).Select(0, 3).Fill_(math.NaN()) })
	all("NaN in x: ")
	x = finite
	ctx = ctx.Clone()
	torch.NoGrad(func() { ctx.Select(0, 0).Select(0, 7).Select(0, 1).Fill_(math.Inf(1)) })
	all("inf in ctx: ")
}
