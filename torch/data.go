package torch

// #include "csrc/dp2o.h"
import "C"

import (
	"encoding/binary"
	"fmt"
	"math"
	"runtime"
	"unsafe"
)

// Elem is a Go element type that maps to one DType.
type Elem interface {
	~float32 | ~float64 | ~int64 | ~int32 | ~int16 | ~int8 | ~uint8 | ~bool
}

func dtypeOf[T Elem]() DType {
	var z T
	switch any(z).(type) {
	case float32:
		return Float32
	case float64:
		return Float64
	case int64:
		return Int64
	case int32:
		return Int32
	case int16:
		return Int16
	case int8:
		return Int8
	case uint8:
		return Uint8
	case bool:
		return Bool
	}
	panic("unreachable")
}

// FromSlice copies data into a new CPU tensor of the given shape (a 1-d
// tensor when no shape is given). It panics with a *Error when the shape
// does not hold len(data) elements.
func FromSlice[T Elem](data []T, shape ...int64) *Tensor {
	if shape == nil {
		shape = []int64{int64(len(data))}
	}
	var b []byte
	if len(data) > 0 {
		var z T
		b = unsafe.Slice((*byte)(unsafe.Pointer(&data[0])), len(data)*int(unsafe.Sizeof(z)))
	}
	t, err := FromBytes(b, dtypeOf[T](), shape)
	if err != nil {
		panic(err)
	}
	return t
}

// Scalar returns a 0-d float32 CPU tensor holding v.
func Scalar(v float64) *Tensor { return ScalarOf(v, Float32, CPU) }

// ScalarOf returns a 0-d tensor of dtype on dev holding v.
func ScalarOf(v float64, dtype DType, dev Device) *Tensor {
	return scalarTensor(v, dtype, int64(dev.Type), int64(dev.Index))
}

// FromBytes copies little-endian raw element bytes into a new CPU tensor.
func FromBytes(b []byte, dtype DType, shape []int64) (*Tensor, error) {
	if _, ok := dtypeInfo[dtype]; !ok {
		return nil, &Error{Op: "from_bytes", Msg: fmt.Sprintf("unsupported dtype %v", dtype)}
	}
	var p unsafe.Pointer
	if len(b) > 0 {
		p = unsafe.Pointer(&b[0])
	}
	sp, sn := intList(shape)
	var out C.dp2o_tensor
	err := C.dp2o_tensor_from_data(p, C.int64_t(len(b)), sp, sn, C.int(dtype), &out)
	runtime.KeepAlive(b)
	runtime.KeepAlive(shape)
	if e := errOf(err, "from_bytes"); e != nil {
		return nil, e
	}
	return newTensor(out), nil
}

// Bytes copies the tensor's elements (row-major, little-endian) to Go memory,
// moving them to the CPU first when needed.
func (t *Tensor) Bytes() []byte {
	n := int(t.Numel()) * t.DType().Size()
	b := make([]byte, n)
	var p unsafe.Pointer
	if n > 0 {
		p = unsafe.Pointer(&b[0])
	}
	err := C.dp2o_tensor_copy_to(t.ptr(), p, C.int64_t(n))
	runtime.KeepAlive(t)
	must(err, "copy_to")
	return b
}

// ToSlice copies the elements of t into a new Go slice; the tensor's dtype
// must be T's.
func ToSlice[T Elem](t *Tensor) []T {
	want := dtypeOf[T]()
	if d := t.DType(); d != want {
		Errorf("to_slice", "tensor is %v, asked for %v", d, want)
	}
	n := int(t.Numel())
	out := make([]T, n)
	if n == 0 {
		return out
	}
	var z T
	err := C.dp2o_tensor_copy_to(t.ptr(), unsafe.Pointer(&out[0]), C.int64_t(n*int(unsafe.Sizeof(z))))
	runtime.KeepAlive(t)
	must(err, "copy_to")
	return out
}

// Float32s returns the elements as float32, converting from any dtype.
func (t *Tensor) Float32s() []float32 {
	if t.DType() == Float32 {
		return ToSlice[float32](t)
	}
	c := t.To(Float32)
	defer c.Close()
	return ToSlice[float32](c)
}

// Float64s returns the elements as float64, converting from any dtype.
func (t *Tensor) Float64s() []float64 {
	if t.DType() == Float64 {
		return ToSlice[float64](t)
	}
	c := t.To(Float64)
	defer c.Close()
	return ToSlice[float64](c)
}

// Int64s returns the elements as int64, converting from any dtype.
func (t *Tensor) Int64s() []int64 {
	if t.DType() == Int64 {
		return ToSlice[int64](t)
	}
	c := t.To(Int64)
	defer c.Close()
	return ToSlice[int64](c)
}

// Float16Bits converts a float32 to IEEE half-precision bits (round to nearest even).
func Float16Bits(f float32) uint16 {
	t := FromSlice([]float32{f})
	defer t.Close()
	h := t.To(Float16)
	defer h.Close()
	return binary.LittleEndian.Uint16(h.Bytes())
}

// BFloat16ToFloat32 widens bfloat16 bits to float32 exactly.
func BFloat16ToFloat32(b uint16) float32 { return math.Float32frombits(uint32(b) << 16) }
