package nn

import (
	"fmt"

	"github.com/dp2osr/dp2o/torch"
)

// Activation is an elementwise activation function.
type Activation func(*torch.Tensor) *torch.Tensor

// ActivationByName maps a diffusers act_fn name (get_activation) to its
// function: silu/swish, relu, gelu (exact), gelu_tanh ("gelu_pytorch_tanh"),
// mish is not supported.
func ActivationByName(name string) (Activation, error) {
	switch name {
	case "silu", "swish":
		return (*torch.Tensor).Silu, nil
	case "relu":
		return (*torch.Tensor).Relu, nil
	case "gelu":
		return (*torch.Tensor).Gelu, nil
	case "gelu_pytorch_tanh", "gelu_tanh":
		return (*torch.Tensor).GeluTanh, nil
	}
	return nil, fmt.Errorf("unsupported activation %q", name)
}
