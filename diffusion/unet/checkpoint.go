package unet

import "github.com/dp2osr/dp2o/torch"

// checkpointed runs f(a, b) through torch.Checkpoint when on (b may be
// nil: then it is not an input): diffusers' gradient checkpointing of
// UNet2DConditionModel and ControlNetModel, one segment per resnet and per
// transformer of the down, mid and up blocks.
func checkpointed(on bool, f func(a, b *torch.Tensor) *torch.Tensor, a, b *torch.Tensor) *torch.Tensor {
	if !on {
		return f(a, b)
	}
	if b == nil {
		return torch.Checkpoint(func(in []*torch.Tensor) []*torch.Tensor { return []*torch.Tensor{f(in[0], nil)} }, a)[0]
	}
	return torch.Checkpoint(func(in []*torch.Tensor) []*torch.Tensor { return []*torch.Tensor{f(in[0], in[1])} }, a, b)[0]
}
