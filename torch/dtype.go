package torch

import "fmt"

// DType is a tensor element type. The values are c10::ScalarType's, which are
// the same in libtorch 1.13 and 2.x.
type DType int

// The element types the binding supports.
const (
	Uint8    DType = 0
	Int8     DType = 1
	Int16    DType = 2
	Int32    DType = 3
	Int64    DType = 4
	Float16  DType = 5
	Float32  DType = 6
	Float64  DType = 7
	Bool     DType = 11
	BFloat16 DType = 15
)

var dtypeInfo = map[DType]struct {
	name string
	size int
	st   string // safetensors code
}{
	Uint8: {"uint8", 1, "U8"}, Int8: {"int8", 1, "I8"}, Int16: {"int16", 2, "I16"},
	Int32: {"int32", 4, "I32"}, Int64: {"int64", 8, "I64"}, Float16: {"float16", 2, "F16"},
	Float32: {"float32", 4, "F32"}, Float64: {"float64", 8, "F64"}, Bool: {"bool", 1, "BOOL"},
	BFloat16: {"bfloat16", 2, "BF16"},
}

// String returns the PyTorch name of the dtype ("float32").
func (d DType) String() string {
	if i, ok := dtypeInfo[d]; ok {
		return i.name
	}
	return fmt.Sprintf("dtype(%d)", int(d))
}

// Size is the number of bytes of one element.
func (d DType) Size() int { return dtypeInfo[d].size }

// IsFloat reports whether d is a floating-point type.
func (d DType) IsFloat() bool {
	return d == Float16 || d == Float32 || d == Float64 || d == BFloat16
}

// SafetensorsCode returns the dtype's code in the safetensors format ("F32").
func (d DType) SafetensorsCode() string { return dtypeInfo[d].st }

// DTypeFromSafetensors maps a safetensors dtype code ("F32", "BF16", …) to a DType.
func DTypeFromSafetensors(code string) (DType, error) {
	for d, i := range dtypeInfo {
		if i.st == code {
			return d, nil
		}
	}
	return 0, fmt.Errorf("torch: unsupported safetensors dtype %q", code)
}

// ParseDType maps a PyTorch dtype name ("float32", "bf16", "half") to a DType.
func ParseDType(s string) (DType, error) {
	switch s {
	case "float32", "float", "f32", "fp32":
		return Float32, nil
	case "float16", "half", "f16", "fp16":
		return Float16, nil
	case "bfloat16", "bf16":
		return BFloat16, nil
	case "float64", "double", "f64":
		return Float64, nil
	case "int64", "long":
		return Int64, nil
	case "int32", "int":
		return Int32, nil
	case "int16", "short":
		return Int16, nil
	case "int8":
		return Int8, nil
	case "uint8":
		return Uint8, nil
	case "bool":
		return Bool, nil
	}
	return 0, fmt.Errorf("torch: unknown dtype %q", s)
}
