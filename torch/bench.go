package torch

// #include "csrc/dp2o.h"
import "C"

import (
	"runtime"
	"unsafe"
)

// BareLoop selects what the C++ reference loop of BareAddNs does with each
// result.
type BareLoop int

const (
	// BareATen destroys each at::add result at once: ATen alone.
	BareATen BareLoop = iota
	// BareHandles wraps each result in a shim handle and frees it at once,
	// as a Go op followed by Close does, without the cgo crossings.
	BareHandles
	// BareScoped wraps each result in a handle and frees the handles 1000
	// at a time, as a Go scope closing every 1000 ops does.
	BareScoped
)

// BareAddNs is the per-op benchmark's reference (cmd/torchbench): the mean
// process CPU nanoseconds of n calls of at::add on two 1×1 float32 tensors,
// looped in C++ inside the shim without crossing into Go. The binding's
// overhead is a Go op's time above it.
func BareAddNs(n int, loop BareLoop) (float64, error) {
	var ns C.double
	if err := C.dp2o_bench_aten_add(C.int64_t(n), C.int(loop), &ns); err != nil {
		return 0, errOf(err, "bench_aten_add")
	}
	return float64(ns), nil
}

// BLASLibrary is the real path of the BLAS library whose sgemm_ libtorch
// calls, as the dynamic linker resolved it ("" when none is visible). On
// Debian it is the libblas.so.3 alternative: OpenBLAS's after `make setup`,
// the reference BLAS with `make test-refblas`.
func BLASLibrary() string {
	buf := make([]byte, 4096)
	C.dp2o_blas_library((*C.char)(unsafe.Pointer(&buf[0])), C.int(len(buf)))
	return C.GoString((*C.char)(unsafe.Pointer(&buf[0])))
}

// RawAddClose is the per-op benchmark's cgo floor (cmd/torchbench): n adds
// of x and y, each result freed at once, calling the shim straight from Go
// with none of the binding's bookkeeping (no Tensor, no scope, no safety
// net). A Go op closed at once costs this plus that bookkeeping.
func RawAddClose(x, y *Tensor, n int) {
	a, b := x.ptr(), y.ptr()
	for range n {
		r := C.dp2o_add(a, b)
		if r.err != nil {
			must(r.err, "add")
		}
		C.dp2o_tensor_free(r.t)
	}
	runtime.KeepAlive(x)
	runtime.KeepAlive(y)
}
