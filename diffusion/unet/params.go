package unet

import (
	"strings"

	"github.com/dp2osr/dp2o/torch"
	"github.com/dp2osr/dp2o/torch/nn"
)

// WeightsFile is the file name of a diffusers model folder's weights.
const WeightsFile = "diffusion_pytorch_model.safetensors"

// TapFunc receives named intermediates during a forward pass, in forward
// order. The tensor is valid only during the call: keep it with
// torch.Unscope(t.Alias()) (and close it later).
type TapFunc func(name string, t *torch.Tensor)

// Param is one named parameter of a model (state-dict name, no prefix).
type Param struct {
	Name   string
	Tensor *torch.Tensor
}

// paramRecorder remembers which parameters a builder created between
// newParamRecorder and done: the parameters of one model, whatever else
// shares the builder.
type paramRecorder struct {
	b     *nn.Builder
	start int
}

func newParamRecorder(b *nn.Builder) paramRecorder {
	return paramRecorder{b: b, start: len(b.Params().Names)}
}

// done returns the new parameters with the builder's prefix stripped.
func (r paramRecorder) done() []Param {
	p := r.b.Params()
	prefix := r.b.Prefix()
	if prefix != "" {
		prefix += "."
	}
	var out []Param
	for _, n := range p.Names[r.start:] {
		out = append(out, Param{Name: strings.TrimPrefix(n, prefix), Tensor: p.Tensors[n]})
	}
	return out
}

// Residuals are the ControlNet outputs a UNet adds to its skip connections
// (Down, one per skip tensor, in the order the down path makes them) and to
// its mid-block output (Mid). Either may be absent.
type Residuals struct {
	Down []*torch.Tensor
	Mid  *torch.Tensor
}

// Close frees the tensors.
func (r *Residuals) Close() {
	if r == nil {
		return
	}
	for _, t := range r.Down {
		t.Close()
	}
	r.Mid.Close()
}
