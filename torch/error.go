package torch

import (
	"errors"
	"fmt"
)

// Error is a failure reported by libtorch (or by the binding's own checks)
// for one operation. Low-level tensor ops panic with a *Error so that model
// code reads like math; exported high-level entry points convert it into a
// returned error with Try or Recover.
type Error struct {
	Op  string // the shim operation, e.g. "matmul"
	Msg string // libtorch's message
}

func (e *Error) Error() string { return fmt.Sprintf("torch: %s: %s", e.Op, e.Msg) }

// Try runs f and returns the *Error it panicked with, if any. Other panics
// propagate: they are bugs, not bad input.
func Try(f func()) (err error) {
	defer Recover(&err)
	f()
	return nil
}

// Recover is deferred by functions that convert tensor panics into errors:
//
//	func (m *Model) Forward(x *torch.Tensor) (y *torch.Tensor, err error) {
//		defer torch.Recover(&err)
//		...
//	}
//
// It stores a recovered *Error in *err and re-panics anything else.
func Recover(err *error) {
	if r := recover(); r != nil {
		var te *Error
		if e, ok := r.(error); ok && errors.As(e, &te) {
			*err = te
			return
		}
		panic(r)
	}
}

// Errorf panics with a *Error built from a format string; model code uses it
// for its own shape and config checks so that they surface like libtorch's.
func Errorf(op, format string, args ...any) {
	panic(&Error{Op: op, Msg: fmt.Sprintf(format, args...)})
}
