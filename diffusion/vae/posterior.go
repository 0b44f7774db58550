package vae

import (
	"github.com/dp2osr/dp2o/torch"
)

// Posterior is diffusers' DiagonalGaussianDistribution over latents: the
// encoder's moments split into Mean and LogVar (clamped to [-30, 20]), and
// Std = exp(0.5·LogVar). Close frees its tensors.
type Posterior struct {
	Mean, LogVar, Std *torch.Tensor
}

// newPosterior splits moments (N, 2·C, h, w) along the channels.
func newPosterior(moments *torch.Tensor) *Posterior {
	s := torch.NewScope()
	defer s.Close()
	parts := moments.Chunk(2, 1)
	p := &Posterior{Mean: parts[0]}
	p.LogVar = parts[1].Clamp(-30, 20)
	p.Std = p.LogVar.MulScalar(0.5).Exp()
	s.Keep(p.Mean, p.LogVar, p.Std)
	return p
}

// Mode is the distribution's mode, its mean (a new handle).
func (p *Posterior) Mode() *torch.Tensor { return p.Mean.Alias() }

// Noise draws the standard normal noise Sample uses, as diffusers'
// randn_tensor does: torch.randn(mean's shape, generator) in the mean's
// dtype, on the CPU for a CPU generator (then moved to the mean's device),
// else on the mean's device.
func (p *Posterior) Noise(gen *torch.Generator) (noise *torch.Tensor, err error) {
	defer torch.Recover(&err)
	return drawLike(p.Mean, gen), nil
}

// Sample draws mean + std·ε with ε from Noise(gen). A fresh CPU generator
// seeded like Python's gives the same ε as latent_dist.sample(generator).
func (p *Posterior) Sample(gen *torch.Generator) (sample *torch.Tensor, err error) {
	defer torch.Recover(&err)
	s := torch.NewScope()
	defer s.Close()
	eps := drawLike(p.Mean, gen)
	return s.Keep(p.Mean.Add(p.Std.Mul(eps))), nil
}

// Close frees the tensors.
func (p *Posterior) Close() {
	if p == nil {
		return
	}
	p.Mean.Close()
	p.LogVar.Close()
	p.Std.Close()
}

// drawLike is randn_tensor(like.shape, generator, like.device, like.dtype).
func drawLike(like *torch.Tensor, gen *torch.Generator) *torch.Tensor {
	return torch.RandnFor(like.Shape(), gen, like.DType(), like.Device())
}
