package unet

import (
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/dp2osr/dp2o/internal/testutil"
	"github.com/dp2osr/dp2o/torch"
)

// TestControlNetBackward checks that training works through the scoped
// forwards: with the UNet frozen, a loss on the UNet's output reaches every
// ControlNet parameter, and freeing the forwards' intermediates does not
// break the graph.
func TestControlNetBackward(t *testing.T) {
	testutil.NoLeak(t)
	dev := testutil.Device(t)
	u, err := Load(testutil.Fixture(t, "sd2/unet"), torch.Float32, dev)
	require.NoError(t, err)
	defer u.Close()
	cn := loadFixtureControlNet(t, "diffusers", dev)
	defer cn.Close()
	for _, p := range cn.Parameters() {
		p.Tensor.SetRequiresGrad(true)
	}
	io := testutil.Tensors(t, testutil.Fixture(t, "sd2/controlnet/io.safetensors"))
	sample, ts, text := onDev(t, io["sample"], dev), onDev(t, io["timesteps"], dev), onDev(t, io["encoder_hidden_states"], dev)

	s := torch.NewScope()
	defer s.Close()
	r := cn.Forward(sample, ts, text, controlCond(t, io, dev), 1)
	defer r.Close()
	out := u.Forward(sample, ts, text, r)
	loss := out.Square().Mean()
	loss.Backward(nil)
	for _, p := range cn.Parameters() {
		g := p.Tensor.Grad()
		require.NotNil(t, g, "%s has no gradient", p.Name)
		n := g.Abs().Sum().Item()
		g.Close()
		require.Greater(t, n, 0.0, "%s has a zero gradient", p.Name)
	}
	for _, p := range u.Parameters() {
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
	dev := testutil.Device(t)
	u, err := Load(testutil.Fixture(t, "sd2/unet"), torch.Float32, dev)
	require.NoError(t, err)
	defer u.Close()
	cn := loadFixtureControlNet(t, "diffusers", dev)
	defer cn.Close()
	for _, p := range cn.Parameters() {
		p.Tensor.SetRequiresGrad(true)
	}
	io := testutil.Tensors(t, testutil.Fixture(t, "sd2/controlnet/io.safetensors"))
	sample, ts, text := onDev(t, io["sample"], dev), onDev(t, io["timesteps"], dev), onDev(t, io["encoder_hidden_states"], dev)
	cond := controlCond(t, io, dev)

	grads := func() map[string]*torch.Tensor {
		for _, p := range cn.Parameters() {
			p.Tensor.ZeroGrad(true)
		}
		torch.EnableGrad(func() {
			s := torch.NewScope()
			defer s.Close()
			r := cn.Forward(sample, ts, text, cond, 1)
			defer r.Close()
			out := u.Forward(sample, ts, text, r)
			if u.GradientCheckpointing {
				require.Positive(t, torch.CheckpointFunctions(), "no segment was checkpointed")
			}
			out.Square().Mean().Backward(nil)
		})
		m := map[string]*torch.Tensor{}
		for _, p := range cn.Parameters() {
			g := p.Tensor.Grad()
			require.NotNil(t, g, "%s has no gradient", p.Name)
			m[p.Name] = g
		}
		return m
	}
	closeAll := func(m map[string]*torch.Tensor) {
		for _, v := range m {
			v.Close()
		}
	}
	want := grads()
	defer closeAll(want)
	u.GradientCheckpointing, cn.GradientCheckpointing = true, true
	got := grads()
	defer closeAll(got)
	require.Zero(t, torch.CheckpointFunctions(), "segments still held after the backward pass")
	for name, w := range want {
		m := torch.Scoped(func() *torch.Tensor { return w.Abs().Max() })
		scale := m.Item()
		m.Close()
		testutil.AssertClose(t, "grad "+name, got[name], w, 1e-5*scale, 0)
	}
}
