// Package optim holds the optimizers of the training side: AdamW and SGD with
// PyTorch 1.13's exact update rules (torch.optim's single-tensor code
// paths), gradient-norm clipping, diffusers' learning-rate schedules, and
// optimizer state saved to and restored from safetensors files.
//
// A training step reads like PyTorch's:
//
//	opt.ZeroGrad()
//	loss.Backward(nil)
//	optim.ClipGradNorm(params, 1.0, 2)
//	opt.Step()
//	sched.Step()
package optim

import (
	"fmt"
	"math"

	"github.com/dp2osr/dp2o/torch"
	"github.com/dp2osr/dp2o/torch/nn"
)

// Param is a named trainable tensor. The name keys the parameter's state in
// a state dict; names must be unique.
type Param struct {
	Name   string
	Tensor *torch.Tensor
}

// Named lists the parameters of an nn.Params in creation order.
func Named(p *nn.Params) []Param {
	out := make([]Param, len(p.Names))
	for i, n := range p.Names {
		out[i] = Param{Name: n, Tensor: p.Tensors[n]}
	}
	return out
}

// Optimizer is what AdamW and SGD have in common.
type Optimizer interface {
	// Step updates every parameter that has a gradient.
	Step() error
	// ZeroGrad drops every gradient (zero_grad(set_to_none=True)).
	ZeroGrad()
	// LR is the current learning rate; SetLR changes it (schedules do).
	LR() float64
	SetLR(lr float64)
	// BaseLR is the learning rate the optimizer was created with.
	BaseLR() float64
	// Params are the optimised parameters.
	Params() []Param
	// StateDict copies the optimizer's state to CPU tensors.
	StateDict() (*State, error)
	// LoadStateDict restores a state saved by StateDict.
	LoadStateDict(s *State) error
	// Close frees the optimizer's state (not the parameters).
	Close()
}

func checkParams(params []Param) error {
	seen := map[string]bool{}
	for i, p := range params {
		if p.Name == "" {
			return fmt.Errorf("optim: parameter %d has no name", i)
		}
		if seen[p.Name] {
			return fmt.Errorf("optim: duplicate parameter name %q", p.Name)
		}
		seen[p.Name] = true
		if p.Tensor == nil || p.Tensor.Closed() {
			return fmt.Errorf("optim: parameter %q is nil or closed", p.Name)
		}
	}
	return nil
}

func zeroGrad(params []Param) {
	for _, p := range params {
		p.Tensor.ZeroGrad(true)
	}
}

func finite(vs ...float64) bool {
	for _, v := range vs {
		if math.IsNaN(v) || math.IsInf(v, 0) {
			return false
		}
	}
	return true
}

// ClipCoef is the factor clip_grad_norm_ scales the gradients by for a
// total norm: clamp(max_norm / (total + 1e-6), max=1), in float32 as torch
// computes it (Python's max_norm / tensor is tensor.reciprocal() *
// max_norm).
func ClipCoef(total, maxNorm float64) float64 {
	return float64(min(float32(1)/(float32(total)+1e-6)*float32(maxNorm), 1))
}

// ClipGradNorm is torch.nn.utils.clip_grad_norm_: it scales the gradients
// of params so that their total normType-norm (math.Inf(1) for the largest
// entry) is at most maxNorm, and returns the total norm before clipping.
// Parameters without a gradient are ignored.
func ClipGradNorm(params []Param, maxNorm, normType float64) (norm float64, err error) {
	defer torch.Recover(&err)
	ts := make([]*torch.Tensor, len(params))
	for i, p := range params {
		ts[i] = p.Tensor
	}
	return torch.ClipGradNorm(ts, maxNorm, normType), nil
}
