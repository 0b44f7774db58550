// Package scheduler holds diffusers' DDPMScheduler and DDIMScheduler for
// Stable Diffusion 2: the float32 noise schedule (linear, scaled_linear,
// squaredcos_cap_v2, sigmoid or trained betas, optionally rescaled to zero
// terminal SNR), inference timesteps with leading, trailing or linspace
// spacing, the reverse step for ε-, v- and x0-prediction, and the training
// helpers AddNoise and Velocity.
//
// Scalars are 0-d float32 CPU tensors combined in diffusers' order, and the
// noise of a DDPM step is drawn like diffusers' randn_tensor, so with the
// same generator seed a sampling loop reproduces diffusers bit for bit on
// the same libtorch.
//
// Step and the training helpers panic with a *torch.Error on bad input,
// like model Forward methods; configuration and SetTimesteps errors are
// returned.
package scheduler

import "github.com/dp2osr/dp2o/torch"

// Scheduler is what a sampling loop needs from DDPM or DDIM.
type Scheduler interface {
	// SetTimesteps chooses n inference timesteps.
	SetTimesteps(n int) error
	// Timesteps are the inference timesteps in the order they are used.
	Timesteps() []int64
	// Step maps the model output at t and x_t to x_{t_prev} and x̂0.
	Step(modelOutput *torch.Tensor, t int64, sample *torch.Tensor, gen *torch.Generator) (prev, predX0 *torch.Tensor)
	// ScaleModelInput returns the model input for x_t (x_t itself here).
	ScaleModelInput(sample *torch.Tensor, t int64) *torch.Tensor
	// InitNoiseSigma scales the initial noise.
	InitNoiseSigma() float64
	// AddNoise diffuses x0 to the per-row timesteps t.
	AddNoise(x0, noise, t *torch.Tensor) *torch.Tensor
	// Velocity is the v-prediction target at the per-row timesteps t.
	Velocity(x0, noise, t *torch.Tensor) *torch.Tensor
	// Config is the scheduler's configuration.
	Config() Config
	// Close frees the schedule's tensors.
	Close()
}

var (
	_ Scheduler = (*DDPM)(nil)
	_ Scheduler = (*DDIM)(nil)
)
