package torch_test

import (
	"runtime"
	"strings"
	"sync"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/dp2osr/dp2o/internal/testutil"
	"github.com/dp2osr/dp2o/torch"
)

// leaves makes fresh leaf tensors (requires_grad) holding the values of ts.
func leaves(ts []*torch.Tensor) []*torch.Tensor {
	out := make([]*torch.Tensor, len(ts))
	for i, t := range ts {
		out[i] = t.Clone().SetRequiresGrad(true)
	}
	return out
}

func grads(t *testing.T, ps []*torch.Tensor) []*torch.Tensor {
	out := make([]*torch.Tensor, len(ps))
	for i, p := range ps {
		out[i] = p.Grad()
		require.NotNil(t, out[i], "parameter %d has no gradient", i)
	}
	return out
}

// mlpGrad is gen_ops.py's "mlp_grad": inputs x, W1, b1, ln_w, ln_b, W2, b2,
// target; outputs y, loss and the gradients of the first seven.
func mlpGrad(a *opArgs) []*torch.Tensor {
	p := leaves(a.in[:7])
	x, w1, b1, lw, lb, w2, b2 := p[0], p[1], p[2], p[3], p[4], p[5], p[6]
	h := torch.Linear(x, w1, b1).Gelu()
	h = torch.LayerNorm(h, []int64{16}, lw, lb, 1e-5)
	y := torch.Linear(h, w2, b2)
	loss := torch.MSELoss(y, a.in[7])
	require.True(a.t, loss.RequiresGrad())
	loss.Backward(nil)
	return append([]*torch.Tensor{y.Detach(), loss.Detach()}, grads(a.t, p)...)
}

// mlpGradArg is "mlp_grad_arg": y = W2·tanh(W1·x + b1) + b2 backpropagated
// from the upstream gradient given as the last input.
func mlpGradArg(a *opArgs) []*torch.Tensor {
	p := leaves(a.in[:5])
	x, w1, b1, w2, b2 := p[0], p[1], p[2], p[3], p[4]
	y := torch.Linear(torch.Linear(x, w1, b1).Tanh(), w2, b2)
	y.Backward(a.in[5])
	return append([]*torch.Tensor{y.Detach()}, grads(a.t, p)...)
}

func TestAutogradMatchesPyTorch(t *testing.T) {
	testutil.NoLeak(t)
	fx := loadOps(t)
	n := 0
	for _, c := range fx.cases {
		if strings.HasPrefix(c.Op, "mlp_") {
			n++
			t.Run(c.Name, func(t *testing.T) { runCase(t, fx, c, opImpls[c.Op]) })
		}
	}
	require.Equal(t, 2, n)
}

func TestBackwardAccumulatesAndZeroGrad(t *testing.T) {
	testutil.NoLeak(t)
	s := torch.NewScope()
	defer s.Close()
	w := torch.FromSlice([]float32{1, 2, 3}).SetRequiresGrad(true)
	require.True(t, w.RequiresGrad())
	require.Nil(t, w.Grad(), "no gradient before backward")

	loss := w.Mul(w).Sum() // d/dw = 2w
	loss.BackwardRetain(nil)
	require.Equal(t, []float32{2, 4, 6}, w.Grad().Float32s())
	loss.Backward(nil) // the retained graph runs again and accumulates
	require.Equal(t, []float32{4, 8, 12}, w.Grad().Float32s())
	requireTorchError(t, func() { loss.Backward(nil) }, "backward through the graph a second time")

	w.ZeroGrad(false)
	g := w.Grad()
	require.NotNil(t, g)
	require.Equal(t, []float32{0, 0, 0}, g.Float32s())
	require.False(t, g.RequiresGrad())

	// Backward with an explicit upstream gradient.
	y := w.MulScalar(3)
	y.Backward(torch.FromSlice([]float32{1, 0.5, -1}))
	require.Equal(t, []float32{3, 1.5, -3}, w.Grad().Float32s())

	w.ZeroGrad(true)
	require.Nil(t, w.Grad())
	w.SetGrad(torch.FromSlice([]float32{7, 7, 7}))
	require.Equal(t, []float32{7, 7, 7}, w.Grad().Float32s())
	w.SetGrad(nil)
	require.Nil(t, w.Grad())
	// A gradient must match the tensor, as PyTorch's grad setter requires.
	requireTorchError(t, func() { w.SetGrad(torch.FromSlice([]float32{7, 7})) }, "different size")
	requireTorchError(t, func() { w.SetGrad(torch.FromSlice([]float64{7, 7, 7})) }, "different type")
	require.Nil(t, w.Grad(), "a refused gradient was set")

	// A non-scalar output needs a gradient argument.
	requireTorchError(t, func() { w.MulScalar(2).Backward(nil) }, "grad can be implicitly created only for scalar outputs")
	// Nothing to differentiate.
	requireTorchError(t, func() { torch.Ones([]int64{1}, torch.Float32, torch.CPU).Sum().Backward(nil) }, "does not require grad")
}

func TestDetach(t *testing.T) {
	testutil.NoLeak(t)
	s := torch.NewScope()
	defer s.Close()
	x := torch.FromSlice([]float32{1, 2}).SetRequiresGrad(true)
	y := x.MulScalar(2)
	require.True(t, y.RequiresGrad())
	d := y.Detach()
	require.False(t, d.RequiresGrad())
	d.Fill_(5) // a detached tensor shares storage
	require.Equal(t, []float32{5, 5}, y.Float32s())
	xd := x.Detach()
	loss := x.Mul(xd).Sum() // d/dx = xd (no gradient flows through xd)
	loss.Backward(nil)
	require.Equal(t, []float32{1, 2}, x.Grad().Float32s())
}

func TestNoGradAcrossGoroutines(t *testing.T) {
	testutil.NoLeak(t)
	require.True(t, torch.GradEnabled())
	w := torch.Unscope(torch.Ones([]int64{8, 8}, torch.Float32, torch.CPU).SetRequiresGrad(true))
	defer w.Close()

	const workers, iters = 16, 200
	var wg sync.WaitGroup
	errs := make(chan string, 2*workers)
	for i := range 2 * workers {
		noGrad := i%2 == 0
		wg.Add(1)
		go func() {
			defer wg.Done()
			check := func(want bool) {
				for range iters {
					s := torch.NewScope()
					y := w.MulScalar(2).Add(w)
					runtime.Gosched() // invite the scheduler to move us
					z := y.Relu().Sum()
					if z.RequiresGrad() != want || y.RequiresGrad() != want || torch.GradEnabled() != want {
						errs <- "requires_grad leaked between goroutines"
						s.Close()
						return
					}
					s.Close()
				}
			}
			if noGrad {
				torch.NoGrad(func() {
					check(false)
					torch.EnableGrad(func() { check(true) })
					check(false)
				})
			} else {
				check(true)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for e := range errs {
		t.Fatal(e)
	}
	require.True(t, torch.GradEnabled(), "NoGrad restored grad mode")

	// NoGrad restores the mode even when f panics.
	err := torch.Try(func() {
		torch.NoGrad(func() { torch.Errorf("test", "boom") })
	})
	require.ErrorContains(t, err, "boom")
	require.True(t, torch.GradEnabled())
}

// TestLinearKernelIgnoresRequiresGrad: a linear layer (and a matmul of a
// batch of rows by a matrix) gives the same bits whether or not an operand
// requires grad, even on a strided view, so that a frozen copy of a model
// computes exactly what the trained model does (a DPO reference at step 0).
// libtorch 2.x picks mm or a broadcast bmm by requires_grad for such a view.
func TestLinearKernelIgnoresRequiresGrad(t *testing.T) {
	testutil.NoLeak(t)
	s := torch.NewScope()
	defer s.Close()
	gen := torch.MustGenerator(torch.CPU, 1)
	dev := testutil.Device(t)
	full := torch.Randn([]int64{3, 20, 48}, gen, torch.Float32, dev)
	x := full.Narrow(1, 5, 11) // (3, 11, 48), not foldable without a copy
	w := torch.Randn([]int64{40, 48}, gen, torch.Float32, dev)
	b := torch.Randn([]int64{40}, gen, torch.Float32, dev)
	frozen := torch.Linear(x, w, b)
	frozenMM := x.Matmul(w.Transpose(0, 1))
	wg, bg := w.Clone().SetRequiresGrad(true), b.Clone().SetRequiresGrad(true)
	trained := torch.Linear(x, wg, bg).Detach()
	trainedMM := x.Matmul(wg.Transpose(0, 1)).Detach()
	testutil.AssertEqual(t, "linear", trained, frozen)
	testutil.AssertEqual(t, "matmul", trainedMM, frozenMM)
}
