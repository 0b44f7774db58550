package torch

// #include "csrc/dp2o.h"
import "C"

// UnsafeHandle returns t's shim handle (a dp2o_tensor: the address of the
// shim's object, as an integer) for packages that call the shim's C API
// themselves (torch/dist). It panics with a *Error for a nil or closed
// tensor. The handle is valid only while t is open: keep t reachable
// (runtime.KeepAlive) until the C call returns, and never free it.
func (t *Tensor) UnsafeHandle() uintptr { return uintptr(t.ptr()) }

// FromUnsafeHandle takes ownership of a handle that the shim's C API
// returned and wraps it like any new tensor (registered with the calling
// goroutine's innermost scope, if any). A zero handle gives nil.
func FromUnsafeHandle(h uintptr) *Tensor { return newTensor(C.dp2o_tensor(h)) }
