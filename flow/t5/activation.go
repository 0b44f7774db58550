package t5

import (
	"fmt"
	"math"

	"github.com/dp2osr/dp2o/torch"
)

// activation maps a T5 dense_act_fn (transformers' ACT2FN name) to its
// function, written in transformers' order of operations.
func activation(name string) (func(*torch.Tensor) *torch.Tensor, error) {
	switch name {
	case "relu":
		return (*torch.Tensor).Relu, nil
	case "gelu":
		return (*torch.Tensor).Gelu, nil
	case "gelu_new":
		return GeluNew, nil
	case "gelu_pytorch_tanh":
		return (*torch.Tensor).GeluTanh, nil
	case "silu", "swish":
		return (*torch.Tensor).Silu, nil
	}
	return nil, fmt.Errorf("t5 config: unsupported dense_act_fn %q (want relu, gelu, gelu_new, gelu_pytorch_tanh or silu)", name)
}

// geluNewC is √(2/π) as transformers' NewGELUActivation computes it.
var geluNewC = math.Sqrt(2.0 / math.Pi)

// GeluNew is transformers' NewGELUActivation ("gelu_new", T5 v1.1's
// activation): 0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³))), op for op as
// Python computes it (F.gelu(approximate="tanh") differs by rounding).
func GeluNew(x *torch.Tensor) *torch.Tensor {
	s := torch.NewScope()
	defer s.Close()
	inner := x.Add(x.Pow(3).MulScalar(0.044715)).MulScalar(geluNewC)
	return s.Keep(x.MulScalar(0.5).Mul(inner.Tanh().AddScalar(1)))
}
