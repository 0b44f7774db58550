package torch

// #include <stdlib.h>
// #include "csrc/dp2o.h"
// extern char *dp2oCheckpointCall(uint64_t id, dp2o_ckpt_call *call);
import "C"

import (
	"fmt"
	"runtime"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"unsafe"
)

// Checkpoint runs fn(inputs) without keeping its intermediate activations
// for the backward pass, as torch.utils.checkpoint.checkpoint with
// use_reentrant=True: the forward pass runs fn under no_grad and keeps only
// the inputs; the backward pass runs fn again on them, under grad and with
// the autocast state of the forward pass, and back-propagates through that
// recomputation. Memory for the activations of fn is traded for one more
// forward pass of it. Gradients reach the inputs that require grad and the
// parameters fn reads (accumulated into their Grad, as a backward pass
// does).
//
// fn must compute the same outputs from the same inputs every time (no
// random draws) and must take every tensor it reads from its inputs, except
// weights that outlive the backward pass: tensors it captured otherwise may
// be closed by then. Its outputs may be new tensors or its inputs. It runs
// in a scope of its own (every tensor it makes but does not return is freed
// when it returns), on the goroutine that calls Checkpoint for the forward
// pass and on the one that calls Backward (or an autograd engine thread,
// for CUDA tensors) for the recomputation.
//
// Where autograd records nothing (grad mode off, or no input requires
// grad) Checkpoint simply returns fn(inputs), in a scope: with no input requiring
// grad, weights inside fn still get their gradients, where PyTorch's
// reentrant checkpoint would drop them.
//
// A panic with a *Error inside fn propagates from Checkpoint with the same
// error; during the backward pass it makes Backward fail with its message.
func Checkpoint(fn func(in []*Tensor) []*Tensor, inputs ...*Tensor) []*Tensor {
	grad := false
	if GradEnabled() {
		for _, t := range inputs {
			if t != nil && t.RequiresGrad() {
				grad = true
				break
			}
		}
	}
	if !grad {
		sc := NewScope()
		defer sc.Close()
		return sc.KeepAll(fn(inputs))
	}
	ckptForgetReleased()
	hs := make([]C.dp2o_tensor, len(inputs))
	for i, t := range inputs {
		if t == nil {
			panic(&Error{Op: "checkpoint", Msg: fmt.Sprintf("input %d is nil", i)})
		}
		hs[i] = t.ptr()
	}
	e := &ckptEntry{fn: fn}
	id := ckptRegister(e)
	out := make([]C.dp2o_tensor, ckptMaxOutputs)
	var n C.int
	var inPtr *C.dp2o_tensor
	if len(hs) > 0 {
		inPtr = &hs[0]
	}
	err := C.dp2o_checkpoint(C.uint64_t(id), inPtr, C.int(len(hs)), &out[0], C.int(len(out)), &n)
	runtime.KeepAlive(inputs)
	if err != nil {
		if p := e.takePanic(); p != nil {
			C.free(unsafe.Pointer(err))
			panic(p)
		}
		must(err, "checkpoint")
	}
	res := make([]*Tensor, int(n))
	for i := range res {
		res[i] = newTensor(out[i])
	}
	return res
}

// ckptMaxOutputs bounds the outputs of a checkpointed function.
const ckptMaxOutputs = 256

// ckptEntry is a checkpointed function while its autograd node lives.
type ckptEntry struct {
	fn func([]*Tensor) []*Tensor
	mu sync.Mutex
	// panicked is what fn panicked with in the forward pass, for Checkpoint
	// to panic with again on the calling goroutine.
	panicked any
}

func (e *ckptEntry) setPanic(p any) {
	e.mu.Lock()
	e.panicked = p
	e.mu.Unlock()
}

func (e *ckptEntry) takePanic() any {
	e.mu.Lock()
	defer e.mu.Unlock()
	p := e.panicked
	e.panicked = nil
	return p
}

var (
	ckptMu      sync.Mutex
	ckptEntries = map[uint64]*ckptEntry{}
	ckptNextID  atomic.Uint64
	ckptOnce    sync.Once
)

func ckptRegister(e *ckptEntry) uint64 {
	ckptOnce.Do(func() { C.dp2o_ckpt_set_callback(C.dp2o_ckpt_fn(C.dp2oCheckpointCall)) })
	id := ckptNextID.Add(1)
	ckptMu.Lock()
	ckptEntries[id] = e
	ckptMu.Unlock()
	return id
}

func ckptLookup(id uint64) *ckptEntry {
	ckptMu.Lock()
	defer ckptMu.Unlock()
	return ckptEntries[id]
}

// ckptForgetReleased drops the functions whose autograd node libtorch has
// freed (the backward pass ran, or the graph was dropped).
func ckptForgetReleased() {
	var ids [64]C.uint64_t
	for {
		n := int(C.dp2o_ckpt_released(&ids[0], C.int(len(ids))))
		if n == 0 {
			return
		}
		ckptMu.Lock()
		for _, id := range ids[:n] {
			delete(ckptEntries, uint64(id))
		}
		ckptMu.Unlock()
	}
}

// CheckpointFunctions is the number of checkpointed functions the binding
// holds for autograd nodes that are still alive (for leak tests).
func CheckpointFunctions() int {
	ckptForgetReleased()
	ckptMu.Lock()
	defer ckptMu.Unlock()
	return len(ckptEntries)
}

// ckptRun is the callback's body: fn on new handles of the inputs, in a
// scope of its own; its outputs are copied for the shim. A panic becomes
// the returned message (and, for the forward pass, is kept for Checkpoint).
func ckptRun(id uint64, call *C.dp2o_ckpt_call) (msg *C.char) {
	e := ckptLookup(id)
	if e == nil {
		return C.CString(fmt.Sprintf("checkpoint: function %d is gone", id))
	}
	defer func() {
		if r := recover(); r != nil {
			e.setPanic(r)
			if te, ok := r.(*Error); ok {
				msg = C.CString(te.Op + ": " + te.Msg)
				return
			}
			msg = C.CString(fmt.Sprintf("panic in a checkpointed function: %v\n%s", r, debug.Stack()))
		}
	}()
	sc := NewScope()
	defer sc.Close()
	in := make([]*Tensor, int(C.dp2o_ckpt_num_inputs(call)))
	for i := range in {
		in[i] = newTensor(C.dp2o_ckpt_input(call, C.int(i)))
	}
	for i, t := range e.fn(in) {
		if t == nil {
			panic(&Error{Op: "checkpoint", Msg: fmt.Sprintf("output %d is nil", i)})
		}
		C.dp2o_ckpt_add_output(call, t.ptr())
	}
	return nil
}
