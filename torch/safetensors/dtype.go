package safetensors

import (
	"encoding/binary"
	"fmt"
	"math"
)

// DType is a safetensors element type, spelled as in the file header
// ("F32", "BF16", ...).
type DType string

// The element types this package knows. F8_E4M3 and F8_E5M2 are known (their
// raw bytes can be read), but consumers that cannot handle 8-bit floats
// should reject them; see [DType.Supported].
const (
	F64    DType = "F64"
	F32    DType = "F32"
	F16    DType = "F16"
	BF16   DType = "BF16"
	I64    DType = "I64"
	I32    DType = "I32"
	I16    DType = "I16"
	I8     DType = "I8"
	U8     DType = "U8"
	BOOL   DType = "BOOL"
	F8E4M3 DType = "F8_E4M3"
	F8E5M2 DType = "F8_E5M2"
)

// Size returns the size of one element in bytes, or 0 if d is not a known
// dtype.
func (d DType) Size() int {
	switch d {
	case F64, I64:
		return 8
	case F32, I32:
		return 4
	case F16, BF16, I16:
		return 2
	case I8, U8, BOOL, F8E4M3, F8E5M2:
		return 1
	}
	return 0
}

// Known reports whether d is one of the dtypes declared in this package.
// [Open] rejects files whose tensors use any other dtype.
func (d DType) Known() bool { return d.Size() != 0 }

// Supported reports whether d is a known dtype with a direct libtorch
// equivalent in every libtorch version this project targets, that is every
// known dtype except the 8-bit floats F8_E4M3 and F8_E5M2.
func (d DType) Supported() bool {
	return d.Known() && d != F8E4M3 && d != F8E5M2
}

// DecodeFloat64s decodes little-endian raw tensor data of the given dtype
// into float64 values. The conversion is exact for every floating-point
// dtype and for integers of up to 32 bits; I64 values beyond ±2^53 are
// rounded. BOOL decodes to 0 or 1 (any non-zero byte is true).
func DecodeFloat64s(dtype DType, data []byte) ([]float64, error) {
	size := dtype.Size()
	if size == 0 {
		return nil, fmt.Errorf("safetensors: unknown dtype %q", string(dtype))
	}
	if len(data)%size != 0 {
		return nil, fmt.Errorf("safetensors: %d bytes of data is not a whole number of %s elements", len(data), dtype)
	}
	out := make([]float64, len(data)/size)
	for i := range out {
		b := data[i*size : (i+1)*size]
		var v float64
		switch dtype {
		case F64:
			v = math.Float64frombits(binary.LittleEndian.Uint64(b))
		case F32:
			v = float64(math.Float32frombits(binary.LittleEndian.Uint32(b)))
		case F16:
			v = halfToFloat64(binary.LittleEndian.Uint16(b))
		case BF16:
			v = float64(math.Float32frombits(uint32(binary.LittleEndian.Uint16(b)) << 16))
		case I64:
			v = float64(int64(binary.LittleEndian.Uint64(b)))
		case I32:
			v = float64(int32(binary.LittleEndian.Uint32(b)))
		case I16:
			v = float64(int16(binary.LittleEndian.Uint16(b)))
		case I8:
			v = float64(int8(b[0]))
		case U8:
			v = float64(b[0])
		case BOOL:
			if b[0] != 0 {
				v = 1
			}
		case F8E4M3:
			v = f8e4m3ToFloat64(b[0])
		case F8E5M2:
			// E5M2 is the upper byte of an IEEE half.
			v = halfToFloat64(uint16(b[0]) << 8)
		}
		out[i] = v
	}
	return out, nil
}

// halfToFloat64 converts IEEE 754 binary16 bits to float64 exactly.
func halfToFloat64(h uint16) float64 {
	sign := 1.0
	if h&0x8000 != 0 {
		sign = -1
	}
	exp := int(h>>10) & 0x1f
	mant := float64(h & 0x3ff)
	switch exp {
	case 0: // zero or subnormal
		return sign * math.Ldexp(mant, -24)
	case 0x1f:
		if mant != 0 {
			return math.NaN()
		}
		return math.Inf(int(sign))
	}
	return sign * math.Ldexp(1024+mant, exp-25)
}

// f8e4m3ToFloat64 converts float8 E4M3FN bits (no infinities, NaN when
// exponent and mantissa are all ones) to float64 exactly.
func f8e4m3ToFloat64(b byte) float64 {
	sign := 1.0
	if b&0x80 != 0 {
		sign = -1
	}
	exp := int(b>>3) & 0xf
	mant := float64(b & 0x7)
	switch {
	case exp == 0xf && b&0x7 == 0x7:
		return math.NaN()
	case exp == 0:
		return sign * math.Ldexp(mant, -9)
	}
	return sign * math.Ldexp(8+mant, exp-10)
}
