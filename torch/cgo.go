package torch

// #cgo CFLAGS: -I${SRCDIR}/csrc
// #cgo LDFLAGS: -L${SRCDIR}/../build -ldp2otorch -Wl,-rpath,${SRCDIR}/../build
// #include <stdlib.h>
// #include "csrc/dp2o.h"
import "C"

import (
	"unsafe"
)

//go:generate go run ./internal/opgen .

// must panics with a *Error when a shim call failed.
func must(err C.dp2o_err, op string) {
	if err != nil {
		msg := C.GoString(err)
		C.free(unsafe.Pointer(err))
		panic(&Error{Op: op, Msg: msg})
	}
}

func cbool(b bool) C.int {
	if b {
		return 1
	}
	return 0
}

// intList passes a Go int64 slice to C without copying (it holds no Go
// pointers, so cgo allows it).
func intList(v []int64) (*C.int64_t, C.int) {
	if len(v) == 0 {
		return nil, 0
	}
	return (*C.int64_t)(unsafe.Pointer(&v[0])), C.int(len(v))
}

// optIntList is intList where nil means "not given" (length −1).
func optIntList(v []int64) (*C.int64_t, C.int) {
	if v == nil {
		return nil, -1
	}
	return intList(v)
}

func tensorList(ts []*Tensor) (*C.dp2o_tensor, C.int) {
	if len(ts) == 0 {
		return nil, 0
	}
	hs := make([]C.dp2o_tensor, len(ts))
	for i, t := range ts {
		hs[i] = t.ptr()
	}
	return &hs[0], C.int(len(ts))
}

// takeList wraps a malloc'd array of handles returned by the shim.
func takeList(arr *C.dp2o_tensor, n C.int) []*Tensor {
	defer C.free(unsafe.Pointer(arr))
	hs := unsafe.Slice(arr, int(n))
	out := make([]*Tensor, n)
	for i, h := range hs {
		out[i] = newTensor(h)
	}
	return out
}

func optPtr(t *Tensor) C.dp2o_tensor {
	if t == nil {
		return 0
	}
	return t.ptr()
}
