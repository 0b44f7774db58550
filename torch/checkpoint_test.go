package torch_test

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/dp2osr/dp2o/internal/testutil"
	"github.com/dp2osr/dp2o/torch"
)

// ckptNet is a small two-layer block with its own weights, and the inputs
// of one call: x (requires grad), a mask that does not, a shift.
type ckptNet struct {
	w1, b1, w2 *torch.Tensor
	x, mask    *torch.Tensor
}

func newCkptNet(t *testing.T, dev torch.Device) *ckptNet {
	gen, err := torch.NewGenerator(torch.CPU, 7)
	require.NoError(t, err)
	s := torch.NewScope()
	defer s.Close()
	mk := func(shape ...int64) *torch.Tensor {
		return torch.Randn(shape, gen, torch.Float32, torch.CPU).ToDevice(dev)
	}
	n := &ckptNet{
		w1: mk(32, 16).SetRequiresGrad(true), b1: mk(32).SetRequiresGrad(true), w2: mk(8, 32).SetRequiresGrad(true),
		x: mk(4, 5, 16).SetRequiresGrad(true), mask: mk(4, 5, 1).GtScalar(0).To(torch.Float32),
	}
	s.Keep(n.w1, n.b1, n.w2, n.x, n.mask)
	return n
}

func (n *ckptNet) close() {
	for _, t := range []*torch.Tensor{n.w1, n.b1, n.w2, n.x, n.mask} {
		t.Close()
	}
}

func (n *ckptNet) params() []*torch.Tensor { return []*torch.Tensor{n.w1, n.b1, n.w2, n.x} }

// block returns (y, h·mask): two outputs, the second an activation.
func (n *ckptNet) block(in []*torch.Tensor) []*torch.Tensor {
	x, mask := in[0], in[1]
	h := torch.Linear(x, n.w1, n.b1).Gelu()
	hm := h.Mul(mask)
	y := torch.Linear(hm.Tanh(), n.w2, nil)
	return []*torch.Tensor{y, hm}
}

// step runs block (checkpointed or not) on x and back-propagates
// sum(y²) + mean(hm) (or sum(y²) only); it returns the outputs and the
// gradients of the weights and x.
func (n *ckptNet) step(t *testing.T, checkpointed, both bool) (outs, grads []*torch.Tensor) {
	for _, p := range n.params() {
		p.ZeroGrad(true)
	}
	var o []*torch.Tensor
	torch.EnableGrad(func() {
		s := torch.NewScope()
		defer s.Close()
		if checkpointed {
			o = torch.Checkpoint(n.block, n.x, n.mask)
		} else {
			o = n.block([]*torch.Tensor{n.x, n.mask})
		}
		require.Len(t, o, 2)
		loss := o[0].Square().Sum()
		if both {
			loss = loss.Add(o[1].Mean())
		}
		loss.Backward(nil)
		for i := range o {
			o[i] = s.Keep(o[i].Detach())
		}
	})
	for _, p := range n.params() {
		g := p.Grad()
		require.NotNil(t, g)
		grads = append(grads, g)
	}
	return o, grads
}

func closeAll(ts []*torch.Tensor) {
	for _, t := range ts {
		t.Close()
	}
}

func TestCheckpointMatchesPlainBackward(t *testing.T) {
	testutil.NoLeak(t)
	dev := testutil.Device(t)
	n := newCkptNet(t, dev)
	defer n.close()
	for _, both := range []bool{true, false} {
		wantOut, want := n.step(t, false, both)
		gotOut, got := n.step(t, true, both)
		// The forward pass runs the same kernels under no_grad as under grad.
		for i := range wantOut {
			testutil.AssertEqual(t, "output", gotOut[i], wantOut[i])
		}
		for i := range want {
			testutil.AssertClose(t, "gradient", got[i], want[i], 1e-6, 1e-5)
		}
		closeAll(wantOut)
		closeAll(gotOut)
		closeAll(want)
		closeAll(got)
	}
	require.Zero(t, torch.CheckpointFunctions(), "functions still held after the backward passes")
}

func TestCheckpointNested(t *testing.T) {
	testutil.NoLeak(t)
	n := newCkptNet(t, testutil.Device(t))
	defer n.close()
	wantOut, want := n.step(t, false, true)
	defer closeAll(wantOut)
	defer closeAll(want)
	inner := n.block
	n2 := *n
	outer := func(in []*torch.Tensor) []*torch.Tensor {
		o := torch.Checkpoint(inner, in...)
		return []*torch.Tensor{o[0], o[1]}
	}
	for _, p := range n.params() {
		p.ZeroGrad(true)
	}
	torch.EnableGrad(func() {
		s := torch.NewScope()
		defer s.Close()
		o := torch.Checkpoint(outer, n2.x, n2.mask)
		o[0].Square().Sum().Add(o[1].Mean()).Backward(nil)
	})
	for i, p := range n.params() {
		g := p.Grad()
		testutil.AssertClose(t, "gradient", g, want[i], 1e-6, 1e-5)
		g.Close()
	}
	require.Zero(t, torch.CheckpointFunctions())
}

func TestCheckpointIdentityAndUnusedOutputs(t *testing.T) {
	testutil.NoLeak(t)
	n := newCkptNet(t, testutil.Device(t))
	defer n.close()
	n.x.ZeroGrad(true)
	torch.EnableGrad(func() {
		s := torch.NewScope()
		defer s.Close()
		// Returns its input unchanged beside a product; only the input is used.
		o := torch.Checkpoint(func(in []*torch.Tensor) []*torch.Tensor {
			return []*torch.Tensor{in[0], in[0].Mul(in[1])}
		}, n.x, n.mask)
		o[0].Sum().Backward(nil)
		g := n.x.Grad()
		defer g.Close()
		one := n.x.OnesLike()
		testutil.AssertEqual(t, "gradient of an identity output", g, one)
	})
}

// TestCheckpointUnreadOutputGetsNoGradient: weights that only feed an
// output nothing reads get no gradient, as without checkpointing (not a
// zero one, which AdamW's weight decay would act on).
func TestCheckpointUnreadOutputGetsNoGradient(t *testing.T) {
	testutil.NoLeak(t)
	n := newCkptNet(t, testutil.Device(t))
	defer n.close()
	for _, checkpointed := range []bool{false, true} {
		for _, p := range n.params() {
			p.ZeroGrad(true)
		}
		torch.EnableGrad(func() {
			s := torch.NewScope()
			defer s.Close()
			fn := func(in []*torch.Tensor) []*torch.Tensor {
				return []*torch.Tensor{torch.Linear(in[0], n.w1, nil), in[0].Mul(n.b1.Narrow(0, 0, 16))}
			}
			var o []*torch.Tensor
			if checkpointed {
				o = torch.Checkpoint(fn, n.x)
			} else {
				o = fn([]*torch.Tensor{n.x})
			}
			o[0].Sum().Backward(nil)
		})
		g := n.b1.Grad()
		require.Nil(t, g, "checkpointed %v: a weight behind an unread output got a gradient", checkpointed)
		g = n.w1.Grad()
		require.NotNil(t, g)
		g.Close()
	}
}

func TestCheckpointWithoutGradRunsDirectly(t *testing.T) {
	testutil.NoLeak(t)
	n := newCkptNet(t, testutil.Device(t))
	defer n.close()
	calls := 0
	fn := func(in []*torch.Tensor) []*torch.Tensor { calls++; return n.block(in) }
	torch.NoGrad(func() {
		o := torch.Checkpoint(fn, n.x, n.mask)
		defer closeAll(o)
		require.False(t, o[0].RequiresGrad())
	})
	require.Equal(t, 1, calls)
	// No input requires grad: the weights inside still get gradients.
	for _, p := range n.params() {
		p.ZeroGrad(true)
	}
	torch.EnableGrad(func() {
		s := torch.NewScope()
		defer s.Close()
		x := n.x.Detach()
		o := torch.Checkpoint(fn, x, n.mask)
		o[0].Sum().Backward(nil)
	})
	require.Equal(t, 2, calls)
	g := n.w1.Grad()
	require.NotNil(t, g)
	g.Close()
	require.Zero(t, torch.CheckpointFunctions())
}

// TestCheckpointAutocastIsRestoredForTheRecomputation: the recomputation
// runs under the forward pass's autocast (bfloat16 on the CPU, float16 on
// CUDA, where the backward pass runs on an autograd engine thread).
func TestCheckpointAutocastIsRestoredForTheRecomputation(t *testing.T) {
	testutil.NoLeak(t)
	dev := testutil.Device(t)
	low := torch.BFloat16
	if dev.IsCUDA() {
		low = torch.Float16
	}
	n := newCkptNet(t, dev)
	defer n.close()
	run := func(checkpointed bool) []*torch.Tensor {
		for _, p := range n.params() {
			p.ZeroGrad(true)
		}
		torch.EnableGrad(func() {
			s := torch.NewScope()
			defer s.Close()
			var o []*torch.Tensor
			torch.Autocast(dev.Type, low, func() {
				if checkpointed {
					o = torch.Checkpoint(n.block, n.x, n.mask)
				} else {
					o = n.block([]*torch.Tensor{n.x, n.mask})
				}
			})
			require.Equal(t, low, o[0].DType(), "autocast did not apply")
			o[0].To(torch.Float32).Square().Sum().Backward(nil)
		})
		var gs []*torch.Tensor
		for _, p := range n.params() {
			gs = append(gs, p.Grad())
		}
		return gs
	}
	want := run(false)
	defer closeAll(want)
	got := run(true)
	defer closeAll(got)
	for i := range want {
		// Run in float32 by the recomputation, the gradients would differ
		// from autocast's at its precision, not at this tolerance.
		testutil.AssertClose(t, "gradient", got[i], want[i], 1e-6, 1e-5)
	}
}

func TestCheckpointErrors(t *testing.T) {
	testutil.NoLeak(t)
	n := newCkptNet(t, testutil.Device(t))
	defer n.close()
	bad := torch.Zeros([]int64{3, 3}, torch.Float32, n.x.Device())
	defer bad.Close()

	// A libtorch error in the forward pass comes out of Checkpoint as the
	// same *Error.
	var plainErr error
	torch.EnableGrad(func() {
		plainErr = torch.Try(func() { n.x.Matmul(bad) })
	})
	require.Error(t, plainErr)
	var err error
	torch.EnableGrad(func() {
		err = torch.Try(func() {
			torch.Checkpoint(func(in []*torch.Tensor) []*torch.Tensor {
				return []*torch.Tensor{in[0].Matmul(bad)}
			}, n.x)
		})
	})
	require.Equal(t, plainErr, err)

	// A bug (a panic that is not a *Error) propagates as itself.
	require.PanicsWithValue(t, "boom", func() {
		torch.EnableGrad(func() {
			torch.Checkpoint(func(in []*torch.Tensor) []*torch.Tensor { panic("boom") }, n.x)
		})
	})

	// A failure in the recomputation makes Backward fail with its message.
	calls := 0
	torch.EnableGrad(func() {
		s := torch.NewScope()
		defer s.Close()
		o := torch.Checkpoint(func(in []*torch.Tensor) []*torch.Tensor {
			calls++
			if calls > 1 {
				return []*torch.Tensor{in[0].Matmul(bad)}
			}
			return n.block(in[:2])
		}, n.x, n.mask)
		err = torch.Try(func() { o[0].Sum().Backward(nil) })
	})
	require.Error(t, err)
	require.Contains(t, err.Error(), "backward")
	require.True(t, strings.Contains(err.Error(), "mat") || strings.Contains(err.Error(), "shape"), err.Error())

	// Returning a different number of outputs the second time is an error.
	calls = 0
	torch.EnableGrad(func() {
		s := torch.NewScope()
		defer s.Close()
		o := torch.Checkpoint(func(in []*torch.Tensor) []*torch.Tensor {
			calls++
			out := n.block(in)
			if calls > 1 {
				return out[:1]
			}
			return out
		}, n.x, n.mask)
		err = torch.Try(func() { o[0].Sum().Backward(nil) })
	})
	require.ErrorContains(t, err, "deterministic")

	// A nil input or output is a clear error.
	torch.EnableGrad(func() {
		err = torch.Try(func() { torch.Checkpoint(n.block, n.x, nil) })
	})
	require.ErrorContains(t, err, "input 1 is nil")
	torch.EnableGrad(func() {
		err = torch.Try(func() {
			torch.Checkpoint(func([]*torch.Tensor) []*torch.Tensor { return []*torch.Tensor{nil} }, n.x)
		})
	})
	require.ErrorContains(t, err, "output 0 is nil")

	// A graph dropped without a backward pass releases its function.
	torch.EnableGrad(func() {
		s := torch.NewScope()
		defer s.Close()
		torch.Checkpoint(n.block, n.x, n.mask)
	})
	require.Zero(t, torch.CheckpointFunctions())
}
