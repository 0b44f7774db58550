package scheduler

import (
	"github.com/dp2osr/dp2o/torch"
)

// DrawNoise is diffusers' randn_tensor(like.shape, generator, like.device,
// like.dtype): N(0, 1) noise in like's dtype, drawn on the CPU for a CPU
// generator and then moved to like's device, or on like's device otherwise
// (nil gen: libtorch's default generator there). It panics with a
// *torch.Error for a CUDA generator and a CPU tensor, as diffusers refuses.
func DrawNoise(like *torch.Tensor, gen *torch.Generator) *torch.Tensor {
	return torch.RandnFor(like.Shape(), gen, like.DType(), like.Device())
}

// coefficients returns √ᾱ_t and √(1−ᾱ_t) for the per-row timesteps t
// (int64, one per batch row), shaped (N, 1, …) to broadcast against x, in
// x's dtype and on its device (diffusers casts ᾱ before taking roots).
func (s *schedule) coefficients(x, t *torch.Tensor) (sqrtA, sqrtB *torch.Tensor) {
	sc := torch.NewScope()
	defer sc.Close()
	ac := s.alphasCumprod.ToDevice(x.Device()).To(x.DType())
	a := ac.IndexSelect(0, t.ToDevice(x.Device()).Reshape([]int64{-1}))
	shape := make([]int64, x.Dim())
	for i := range shape {
		shape[i] = 1
	}
	shape[0] = -1
	sqrtA = a.Sqrt().Reshape(shape)
	sqrtB = a.RSub(1).Sqrt().Reshape(shape)
	sc.Keep(sqrtA, sqrtB)
	return sqrtA, sqrtB
}

// AddNoise is add_noise: √ᾱ_t·x0 + √(1−ᾱ_t)·noise, with t an int64 tensor
// holding one timestep per row of x0 (the forward diffusion of training).
// It panics with a *torch.Error on bad input.
func (s *schedule) AddNoise(x0, noise, t *torch.Tensor) *torch.Tensor {
	sc := torch.NewScope()
	defer sc.Close()
	sa, sb := s.coefficients(x0, t)
	return sc.Keep(sa.Mul(x0).Add(sb.Mul(noise)))
}

// Velocity is get_velocity, the v-prediction training target:
// √ᾱ_t·noise − √(1−ᾱ_t)·x0, with one timestep per row. It panics with a
// *torch.Error on bad input.
func (s *schedule) Velocity(x0, noise, t *torch.Tensor) *torch.Tensor {
	sc := torch.NewScope()
	defer sc.Close()
	sa, sb := s.coefficients(x0, t)
	return sc.Keep(sa.Mul(noise).Sub(sb.Mul(x0)))
}
