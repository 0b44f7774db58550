package transformer

import (
	"fmt"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/dp2osr/dp2o/internal/testutil"
	"github.com/dp2osr/dp2o/torch"
)

// controlNetBackward makes every ControlNet parameter require grad and
// back-propagates mean(out²) of the frozen transformer fed the ControlNet's
// residuals for the fixture inputs ref.
func controlNetBackward(t *testing.T, f *Flux, cn *ControlNet, ref map[string]*torch.Tensor) {
	t.Helper()
	for _, p := range cn.Parameters() {
		p.Tensor.SetRequiresGrad(true)
	}
	s := torch.NewScope()
	defer s.Close()
	blocks, singles, err := cn.Forward(input(ref), ref["controlnet_cond"], 1)
	require.NoError(t, err)
	in := input(ref)
	in.ControlNetBlockSamples, in.ControlNetSingleBlockSamples = blocks, singles
	out, err := f.Forward(in)
	require.NoError(t, err)
	if f.GradientCheckpointing || cn.GradientCheckpointing {
		require.Positive(t, torch.CheckpointFunctions(), "no block was checkpointed")
	}
	out.Square().Mean().Backward(nil)
}

// TestControlNetBackward checks that training works through the scoped
// forwards: with the transformer frozen, a loss on its output reaches
// every ControlNet parameter that influences it — all but the text-stream
// parameters of the last double block, whose outputs nothing reads (in
// diffusers they get no gradient either) — and a ControlNet fresh from
// from_transformer, whose output layers are zero, gets its first gradients
// in those layers.
func TestControlNetBackward(t *testing.T) {
	testutil.NoLeak(t)
	f := loadFixtureFlux(t)
	ref := testutil.Tensors(t, testutil.Fixture(t, "flux/controlnet/io.safetensors"))
	loaded, err := LoadControlNet(testutil.Fixture(t, "flux/controlnet"), torch.Float32, torch.CPU)
	require.NoError(t, err)
	defer loaded.Close()
	fresh, err := ControlNetFromTransformer(f, ControlNetOptions{NumLayers: loaded.Config.NumLayers})
	require.NoError(t, err)
	defer fresh.Close()

	backward := func(cn *ControlNet) { controlNetBackward(t, f, cn, ref) }
	gradSum := func(p Param) (float64, bool) {
		g := p.Tensor.Grad()
		if g == nil {
			return 0, false
		}
		defer g.Close()
		sum := torch.Scoped(func() *torch.Tensor { return g.Abs().Sum() })
		defer sum.Close()
		return sum.Item(), true
	}

	backward(loaded)
	last := fmt.Sprintf("transformer_blocks.%d.", loaded.Config.NumLayers-1)
	dead := []string{"attn.add_q_proj.", "attn.norm_added_q.", "attn.to_add_out.", "ff_context."}
	for _, p := range loaded.Parameters() {
		n, ok := gradSum(p)
		isDead := false
		for _, d := range dead {
			isDead = isDead || strings.HasPrefix(p.Name, last+d)
		}
		if isDead && loaded.Config.NumSingleLayers == 0 {
			require.Zero(t, n, "%s only feeds unused outputs", p.Name)
			continue
		}
		require.True(t, ok, "%s has no gradient", p.Name)
		require.Greater(t, n, 0.0, "%s has a zero gradient", p.Name)
	}
	for _, p := range f.Parameters() {
		require.Nil(t, p.Tensor.Grad(), "frozen transformer weight %s got a gradient", p.Name)
	}

	backward(fresh)
	for _, p := range fresh.Parameters() {
		if strings.HasPrefix(p.Name, "controlnet_blocks.") {
			n, ok := gradSum(p)
			require.True(t, ok, "%s has no gradient", p.Name)
			require.Greater(t, n, 0.0, "%s has a zero gradient", p.Name)
		}
	}
}

// TestControlNetBackwardOtherAttention: the ControlNet's gradients through
// the frozen transformer are the same, up to float32 rounding, when every
// attention runs the other way (libtorch's fused kernels and their backward
// on the CPU, as CUDA trains; the math order on CUDA). The tolerance is the
// training fixture's for step-0 gradients (preference/train_flux README):
// 3e-4 of each tensor's largest gradient.
func TestControlNetBackwardOtherAttention(t *testing.T) {
	const tolGradRel = 3e-4
	compareControlNetGrads(t, tolGradRel, func(f *Flux, cn *ControlNet) {
		withOtherAttention(t, f.blocks, f.singles)
		withOtherAttention(t, cn.blocks, cn.singles)
	})
}

// TestControlNetBackwardCheckpointed: with gradient checkpointing on both
// models the ControlNet gets the same gradients (the recomputation runs
// the same kernels; only the order in which the backward pass sums a
// tensor's gradient contributions may differ).
func TestControlNetBackwardCheckpointed(t *testing.T) {
	compareControlNetGrads(t, 1e-5, func(f *Flux, cn *ControlNet) {
		f.GradientCheckpointing, cn.GradientCheckpointing = true, true
	})
	require.Zero(t, torch.CheckpointFunctions(), "checkpointed blocks still held after the backward passes")
}

// compareControlNetGrads compares the ControlNet's gradients
// (controlNetBackward) before and after change, each tensor at tolRel of
// its largest gradient.
func compareControlNetGrads(t *testing.T, tolRel float64, change func(*Flux, *ControlNet)) {
	t.Helper()
	testutil.NoLeak(t)
	f := loadFixtureFlux(t)
	ref := testutil.Tensors(t, testutil.Fixture(t, "flux/controlnet/io.safetensors"))
	cn, err := LoadControlNet(testutil.Fixture(t, "flux/controlnet"), torch.Float32, torch.CPU)
	require.NoError(t, err)
	defer cn.Close()
	grads := func() map[string]*torch.Tensor {
		for _, p := range cn.Parameters() {
			p.Tensor.ZeroGrad(true)
		}
		controlNetBackward(t, f, cn, ref)
		m := map[string]*torch.Tensor{}
		for _, p := range cn.Parameters() {
			if g := p.Tensor.Grad(); g != nil {
				m[p.Name] = torch.Unscope(g.Clone())
				g.Close()
			}
		}
		return m
	}
	want := grads()
	defer testutil.CloseMap(want)
	change(f, cn)
	got := grads()
	defer testutil.CloseMap(got)
	require.Equal(t, len(want), len(got), "parameters with a gradient")
	for name, w := range want {
		g, ok := got[name]
		require.True(t, ok, "%s: no gradient after the change", name)
		testutil.AssertCloseToMax(t, "grad "+name, g, w, tolRel)
	}
}
