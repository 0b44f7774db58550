package torch

// #include <stdlib.h>
// #include "csrc/dp2o.h"
import "C"

import (
	"bytes"
	"unsafe"
)

func unsafePtr(b []byte) unsafe.Pointer { return unsafe.Pointer(&b[0]) }

func cstr(b []byte) string {
	if i := bytes.IndexByte(b, 0); i >= 0 {
		b = b[:i]
	}
	return string(b)
}

// errOf converts a shim error into a Go error (nil on success).
func errOf(err C.dp2o_err, op string) error {
	if err == nil {
		return nil
	}
	msg := C.GoString(err)
	C.free(unsafe.Pointer(err))
	return &Error{Op: op, Msg: msg}
}
