package torch

// #include "csrc/dp2o.h"
import "C"

import "runtime"

// SetRequiresGrad marks the tensor as a leaf that accumulates gradients.
func (t *Tensor) SetRequiresGrad(on bool) *Tensor {
	err := C.dp2o_tensor_set_requires_grad(t.ptr(), cbool(on))
	runtime.KeepAlive(t)
	must(err, "requires_grad_")
	return t
}

// RequiresGrad reports whether autograd records operations on the tensor.
func (t *Tensor) RequiresGrad() bool {
	r := C.dp2o_tensor_requires_grad(t.ptr()) != 0
	runtime.KeepAlive(t)
	return r
}

// Backward computes gradients of t with respect to the graph's leaves. grad
// is the upstream gradient (nil for a scalar t).
func (t *Tensor) Backward(grad *Tensor) {
	err := C.dp2o_tensor_backward(t.ptr(), optPtr(grad), 0)
	runtime.KeepAlive(t)
	runtime.KeepAlive(grad)
	must(err, "backward")
}

// BackwardRetain is Backward keeping the graph for another backward pass.
func (t *Tensor) BackwardRetain(grad *Tensor) {
	err := C.dp2o_tensor_backward(t.ptr(), optPtr(grad), 1)
	runtime.KeepAlive(t)
	runtime.KeepAlive(grad)
	must(err, "backward")
}

// Grad returns a new handle to the accumulated gradient, or nil when there is none.
func (t *Tensor) Grad() *Tensor {
	var out C.dp2o_tensor
	err := C.dp2o_tensor_grad(t.ptr(), &out)
	runtime.KeepAlive(t)
	must(err, "grad")
	return newTensor(out)
}

// ZeroGrad clears the accumulated gradient (setToNone drops it entirely, as
// optimizer.zero_grad(set_to_none=True) does).
func (t *Tensor) ZeroGrad(setToNone bool) {
	err := C.dp2o_tensor_zero_grad(t.ptr(), cbool(setToNone))
	runtime.KeepAlive(t)
	must(err, "zero_grad")
}

// SetGrad replaces the accumulated gradient (nil clears it).
func (t *Tensor) SetGrad(g *Tensor) {
	err := C.dp2o_tensor_set_grad(t.ptr(), optPtr(g))
	runtime.KeepAlive(t)
	runtime.KeepAlive(g)
	must(err, "set_grad")
}

// GradEnabled reports whether autograd records operations on the calling
// goroutine's current OS thread.
func GradEnabled() bool { return C.dp2o_grad_enabled() != 0 }

// NoGrad runs f with autograd recording off, as torch.no_grad(). libtorch's
// grad mode is per OS thread, so the goroutine is locked to its thread for
// the extent of f; goroutines that f starts are not covered.
func NoGrad(f func()) {
	withGrad(false, f)
}

// EnableGrad runs f with autograd recording on (inside a NoGrad, say), on
// one OS thread. Run a training step's forward and backward inside it (or
// with the goroutine locked to its thread): libtorch numbers autograd nodes
// per OS thread and orders the backward pass by those numbers, so a
// goroutine that migrates between threads mid-forward gets another
// summation order, and gradients that differ in their last bits from run
// to run.
func EnableGrad(f func()) {
	withGrad(true, f)
}

func withGrad(on bool, f func()) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	prev := C.dp2o_grad_enabled()
	C.dp2o_set_grad_enabled(cbool(on))
	defer C.dp2o_set_grad_enabled(prev)
	f()
}

// Autocast runs f under automatic mixed precision for dev's device type, as
// torch.autocast(device_type, dtype): on CUDA, matmuls and convolutions
// run in dtype (float16 by default in PyTorch) and precision-sensitive ops
// (norms, softmax, reductions) in float32, whatever the weights' dtype. Like
// grad mode, the state is per OS thread, so the goroutine is locked to its
// thread for the extent of f.
func Autocast(dev DeviceType, dtype DType, f func()) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	var prevOn, prevDType C.int
	must(C.dp2o_autocast_enter(C.int(dev), C.int(dtype), &prevOn, &prevDType), "autocast")
	defer func() {
		must(C.dp2o_autocast_exit(C.int(dev), prevOn, prevDType), "autocast")
	}()
	f()
}

// AutocastEnabled reports whether autocast is on for the device type on the
// calling goroutine's current OS thread.
func AutocastEnabled(dev DeviceType) bool { return C.dp2o_autocast_enabled(C.int(dev)) != 0 }

// PlainKernels runs f with the CPU fast paths (the XNNPACK kernels that
// FastLinear, FusedAttention and GEGLUFeedForward take where autograd
// records nothing, and the blocked attention of SetAttentionChunkBytes)
// off on the goroutine's OS thread, so that f computes
// with exactly the kernels the autograd path uses: for a frozen model
// whose outputs must match a trained copy's bit for bit (a DPO reference
// at step 0). Like grad mode, the setting is per OS thread, so the
// goroutine is locked to its thread for the extent of f.
func PlainKernels(f func()) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	prev := C.dp2o_set_fast_paths(0)
	defer C.dp2o_set_fast_paths(prev)
	f()
}
