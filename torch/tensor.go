package torch

// #include <stdlib.h>
// #include "csrc/dp2o.h"
import "C"

import (
	"fmt"
	"runtime"
	"strings"
	"sync/atomic"
	"unsafe"
)

// Tensor owns one libtorch tensor handle. Close frees it deterministically;
// scopes (NewScope) close every tensor made inside them that was not kept.
// A runtime cleanup frees handles that are never closed, as a safety net
// only: GPU memory must not wait for the garbage collector.
//
// A Tensor may be read from several goroutines, but Close must not race
// with its use.
type Tensor struct {
	// h is the shim handle (a C pointer, nil once closed), kept as an
	// integer so that a Tensor holds no pointer: the garbage collector
	// then never scans one, and a new one is a cheaper, smaller allocation
	// (24 bytes) on every op. handle and setHandle convert.
	h      uintptr
	scope  uint64 // the owning Scope's id; 0 for none
	guard_ uint32 // the safety net's state (guard.go), accessed atomically
}

// handle is t.h as the shim's handle type.
func (t *Tensor) handle() C.dp2o_tensor { return C.dp2o_tensor(t.h) }

// setHandle stores a handle in t.h.
func (t *Tensor) setHandle(h C.dp2o_tensor) { t.h = uintptr(h) }

// headOf is the C header of the shim's object behind handle h. The handle
// is a C address carried as an integer; the object is C memory, which the
// garbage collector never tracks or moves.
func headOf(h C.dp2o_tensor) *C.dp2o_owned_head {
	return *(**C.dp2o_owned_head)(unsafe.Pointer(&h))
}

// newTensor wraps a handle returned by the shim and registers it with the
// calling goroutine's innermost scope, if any.
func newTensor(h C.dp2o_tensor) *Tensor {
	if h == 0 {
		return nil
	}
	t := &Tensor{}
	t.setHandle(h)
	if activeScopes.Load() > 0 {
		if s := currentScope(); s != nil {
			t.scope = s.id
			s.tensors = append(s.tensors, t)
			return t
		}
	}
	t.guardNew()
	return t
}

// ptr returns the handle, panicking with a *Error for a nil or closed tensor.
func (t *Tensor) ptr() C.dp2o_tensor {
	if t == nil {
		panic(&Error{Op: "tensor", Msg: "nil tensor"})
	}
	if t.h == 0 {
		panic(&Error{Op: "tensor", Msg: "use of a closed tensor"})
	}
	return t.handle()
}

// Close frees the tensor's handle. It is idempotent and safe on nil. A
// small CPU tensor outside autograd (storage of at most 64 KiB) is handed
// to the shim without a cgo call and freed at the start of the next shim
// call from any goroutine (or after the next garbage collection, or when
// LiveTensors or LiveBytes counts); every other tensor, GPU memory
// included, is freed before Close returns.
func (t *Tensor) Close() {
	if t == nil || t.h == 0 {
		return
	}
	t.unguard()
	h := t.handle()
	if headOf(h).deferrable != 0 {
		freeLater(h)
	} else {
		C.dp2o_tensor_free(h)
	}
	t.h = 0
	t.scope = 0
}

// deferredList is the shim's lock-free list of handles to free at its next
// call (dp2o_deferred_list).
var deferredList = (*uintptr)(unsafe.Pointer(C.dp2o_deferred_list()))

// freeLater frees a small CPU handle outside autograd without a cgo call:
// it is pushed onto the shim's deferred list, which the next shim call from
// any thread empties first (and the live counters before they count). A
// handle's memory is its own until then, so the list is linked through
// its head's next field.
func freeLater(h C.dp2o_tensor) {
	head := headOf(h)
	next := (*uintptr)(unsafe.Pointer(&head.next))
	self := uintptr(h)
	for {
		old := atomic.LoadUintptr(deferredList)
		*next = old
		if atomic.CompareAndSwapUintptr(deferredList, old, self) {
			return
		}
	}
}

// Closed reports whether the tensor has been closed.
func (t *Tensor) Closed() bool { return t == nil || t.h == 0 }

// Alias returns a new handle to the same tensor (same storage, same autograd
// identity), which has its own lifetime.
func (t *Tensor) Alias() *Tensor {
	var out C.dp2o_tensor
	err := C.dp2o_tensor_shallow_clone(t.ptr(), &out)
	runtime.KeepAlive(t)
	must(err, "alias")
	return newTensor(out)
}

// Dim is the number of dimensions.
func (t *Tensor) Dim() int {
	n := int(C.dp2o_tensor_ndim(t.ptr()))
	runtime.KeepAlive(t)
	return n
}

// Shape returns the sizes of every dimension.
func (t *Tensor) Shape() []int64 {
	h := t.ptr()
	n := int(C.dp2o_tensor_ndim(h))
	s := make([]int64, n)
	if n > 0 {
		C.dp2o_tensor_shape(h, (*C.int64_t)(unsafe.Pointer(&s[0])))
	}
	runtime.KeepAlive(t)
	return s
}

// Size returns the size of dimension d (negative d counts from the end).
func (t *Tensor) Size(d int) int64 {
	s := t.Shape()
	if d < 0 {
		d += len(s)
	}
	if d < 0 || d >= len(s) {
		Errorf("size", "dimension %d out of range for a %d-d tensor", d, len(s))
	}
	return s[d]
}

// Strides returns the strides of every dimension, in elements.
func (t *Tensor) Strides() []int64 {
	h := t.ptr()
	n := int(C.dp2o_tensor_ndim(h))
	s := make([]int64, n)
	if n > 0 {
		C.dp2o_tensor_strides(h, (*C.int64_t)(unsafe.Pointer(&s[0])))
	}
	runtime.KeepAlive(t)
	return s
}

// Numel is the number of elements.
func (t *Tensor) Numel() int64 {
	n := int64(C.dp2o_tensor_numel(t.ptr()))
	runtime.KeepAlive(t)
	return n
}

// DType is the element type.
func (t *Tensor) DType() DType {
	d := DType(C.dp2o_tensor_dtype(t.ptr()))
	runtime.KeepAlive(t)
	return d
}

// Device is where the tensor lives.
func (t *Tensor) Device() Device {
	var typ, idx C.int
	C.dp2o_tensor_device(t.ptr(), &typ, &idx)
	runtime.KeepAlive(t)
	return Device{DeviceType(typ), int(idx)}
}

// IsContiguous reports whether the tensor is laid out row-major without gaps.
func (t *Tensor) IsContiguous() bool {
	c := C.dp2o_tensor_is_contiguous(t.ptr()) != 0
	runtime.KeepAlive(t)
	return c
}

// StorageOffset is the offset of the first element in its storage.
func (t *Tensor) StorageOffset() int64 {
	o := int64(C.dp2o_tensor_storage_offset(t.ptr()))
	runtime.KeepAlive(t)
	return o
}

// To converts the tensor to dtype (a new tensor; the same data when the
// dtype already matches).
func (t *Tensor) To(dtype DType) *Tensor { return t.toDType(dtype) }

// ToDevice moves the tensor to dev.
func (t *Tensor) ToDevice(dev Device) *Tensor {
	return t.toDevice(int64(dev.Type), int64(dev.Index), false)
}

// Item returns the value of a one-element tensor as float64.
func (t *Tensor) Item() float64 {
	var v C.double
	err := C.dp2o_tensor_item(t.ptr(), &v)
	runtime.KeepAlive(t)
	must(err, "item")
	return float64(v)
}

// ItemInt returns the value of a one-element tensor as int64.
func (t *Tensor) ItemInt() int64 {
	var v C.int64_t
	err := C.dp2o_tensor_item_int(t.ptr(), &v)
	runtime.KeepAlive(t)
	must(err, "item")
	return int64(v)
}

// String prints the tensor as libtorch does, with its shape and dtype.
func (t *Tensor) String() string {
	if t == nil {
		return "Tensor(nil)"
	}
	if t.h == 0 {
		return "Tensor(closed)"
	}
	var s *C.char
	err := C.dp2o_tensor_to_string(t.handle(), &s)
	runtime.KeepAlive(t)
	if e := errOf(err, "string"); e != nil {
		return fmt.Sprintf("Tensor(%v)", e)
	}
	str := C.GoString(s)
	C.free(unsafe.Pointer(s))
	return fmt.Sprintf("Tensor(shape=%v, dtype=%v, device=%v)\n%s", t.Shape(), t.DType(), t.Device(), strings.TrimRight(str, "\n"))
}

// LiveTensors is the number of tensor handles not yet closed (handles
// closed lazily by Close are freed first, so they never count).
func LiveTensors() int64 { return int64(C.dp2o_live_tensors()) }

// LiveBytes is the number of element bytes held by live handles (a view
// counts its own elements; shared storage is counted per handle).
func LiveBytes() int64 { return int64(C.dp2o_live_bytes()) }

// deferredMaxBytes is the storage size up to which Close frees lazily.
const deferredMaxBytes = C.DP2O_DEFERRED_MAX_BYTES

// deferredPending reports whether handles closed lazily wait on the shim's
// list (for tests).
func deferredPending() bool { return atomic.LoadUintptr(deferredList) != 0 }
