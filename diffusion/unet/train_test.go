package unet

import (
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/dp2osr/dp2o/internal/testutil"
	"github.com/dp2osr/dp2o/torch"
)

// backwardCase is the fixture UNet (frozen) and ControlNet (trainable) with
// the ControlNet fixture's inputs, on the test device.
type backwardCase struct {
	u                      *UNet
	cn                     *ControlNet
	sample, ts, text, cond *torch.Tensor
}

func newBackwardCase(t *testing.T) *backwardCase {
	dev := testutil.Device(t)
	u, err := Load(testutil.Fixture(t, "sd2/unet"), torch.Float32, dev)
	require.NoError(t, err)
	t.Cleanup(u.Close)
	cn := loadFixtureControlNet(t, "diffusers", dev)
	t.Cleanup(cn.Close)
	for _, p := range cn.Parameters() {
		p.Tensor.SetRequiresGrad(true)
	}
	io := testutil.Tensors(t, testutil.Fixture(t, "sd2/controlnet/io.safetensors"))
	return &backwardCase{u: u, cn: cn, sample: onDev(t, io["sample"], dev), ts: onDev(t, io["timesteps"], dev),
		text: onDev(t, io["encoder_hidden_states"], dev), cond: controlCond(t, io, dev)}
}

// grads back-propagates mean(out²) of the UNet fed the ControlNet's
// residuals, from fresh gradients, and returns every ControlNet parameter's
// gradient (the caller closes them).
func (c *backwardCase) grads(t *testing.T) map[string]*torch.Tensor {
	for _, p := range c.cn.Parameters() {
		p.Tensor.ZeroGrad(true)
	}
	torch.EnableGrad(func() {
		s := torch.NewScope()
		defer s.Close()
		r := c.cn.Forward(c.sample, c.ts, c.text, c.cond, 1)
		defer r.Close()
		out := c.u.Forward(c.sample, c.ts, c.text, r)
		if c.u.GradientCheckpointing {
			require.Positive(t, torch.CheckpointFunctions(), "no segment was checkpointed")
		}
		out.Square().Mean().Backward(nil)
	})
	m := map[string]*torch.Tensor{}
	for _, p := range c.cn.Parameters() {
		g := p.Tensor.Grad()
		require.NotNil(t, g, "%s has no gradient", p.Name)
		m[p.Name] = g
	}
	return m
}

// TestControlNetBackward checks that training works through the scoped
// forwards: with the UNet frozen, a loss on the UNet's output reaches every
// ControlNet parameter, and freeing the forwards' intermediates does not
// break the graph.
func TestControlNetBackward(t *testing.T) {
	testutil.NoLeak(t)
	c := newBackwardCase(t)
	g := c.grads(t)
	defer testutil.CloseMap(g)
	for name, gr := range g {
		sum := torch.Scoped(func() *torch.Tensor { return gr.Abs().Sum() })
		n := sum.Item()
		sum.Close()
		require.Greater(t, n, 0.0, "%s has a zero gradient", name)
	}
	for _, p := range c.u.Parameters() {
		require.Nil(t, p.Tensor.Grad(), "frozen UNet weight %s got a gradient", p.Name)
	}
}

// TestControlNetBackwardCheckpointed: with gradient checkpointing on the
// UNet and the ControlNet, the ControlNet gets the same gradients as
// without (the recomputation runs the same kernels; only the order in which
// the backward pass sums a tensor's gradient contributions may differ:
// 1e-5 of each tensor's largest gradient), and every checkpointed segment
// is released after the backward pass.
func TestControlNetBackwardCheckpointed(t *testing.T) {
	testutil.NoLeak(t)
	c := newBackwardCase(t)
	want := c.grads(t)
	defer testutil.CloseMap(want)
	c.u.GradientCheckpointing, c.cn.GradientCheckpointing = true, true
	got := c.grads(t)
	defer testutil.CloseMap(got)
	require.Zero(t, torch.CheckpointFunctions(), "segments still held after the backward pass")
	for name, w := range want {
		testutil.AssertCloseToMax(t, "grad "+name, got[name], w, 1e-5)
	}
}
