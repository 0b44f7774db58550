package dist

// #cgo CFLAGS: -I${SRCDIR}/../csrc
// #cgo LDFLAGS: -L${SRCDIR}/../../build -ldp2otorch -Wl,-rpath,${SRCDIR}/../../build
// #include <stdlib.h>
// #include "dist.h"
import "C"

import (
	"errors"
	"fmt"
	"runtime"
	"strings"
	"time"
	"unsafe"

	"github.com/dp2osr/dp2o/torch"
)

// errOf converts a shim error (already prefixed "dist: ") into a Go error.
func errOf(e C.dp2o_err) error {
	if e == nil {
		return nil
	}
	msg := C.GoString(e)
	C.free(unsafe.Pointer(e))
	return errors.New(msg)
}

// handles lists the shim handles of ts, failing on a nil or closed tensor.
func handles(what string, ts []*torch.Tensor) (hs []C.dp2o_tensor, err error) {
	hs = make([]C.dp2o_tensor, len(ts))
	for i, t := range ts {
		if t == nil {
			return nil, fmt.Errorf("dist: %s: tensor %d is nil", what, i)
		}
		if err := torch.Try(func() { hs[i] = C.dp2o_tensor(t.UnsafeHandle()) }); err != nil {
			return nil, fmt.Errorf("dist: %s: tensor %d: %w", what, i, err)
		}
	}
	return hs, nil
}

func listPtr(hs []C.dp2o_tensor) *C.dp2o_tensor {
	if len(hs) == 0 {
		return nil
	}
	return &hs[0]
}

func millis(d time.Duration) C.int64_t {
	ms := d.Milliseconds()
	if d > 0 && ms == 0 {
		ms = 1
	}
	return C.int64_t(ms)
}

// Backends lists the backends compiled into the shim ("gloo", "nccl").
func Backends() []string {
	var buf [64]C.char
	C.dp2o_dist_backends(&buf[0], C.int(len(buf)))
	s := C.GoString(&buf[0])
	if s == "" {
		return nil
	}
	return strings.Split(s, ",")
}

// HasBackend reports whether the shim was built with backend ("gloo", "nccl").
func HasBackend(backend string) bool {
	for _, b := range Backends() {
		if b == backend {
			return true
		}
	}
	return false
}

// keep marks tensors reachable until the C call that uses their handles
// has returned.
func keep(ts []*torch.Tensor) { runtime.KeepAlive(ts) }
