package scheduler

import (
	"fmt"
	"slices"

	"github.com/dp2osr/dp2o/torch"
)

// DDPM is diffusers' DDPMScheduler (ancestral sampling, the C-SD2
// pipeline's sampler). Every scalar of a step is a 0-d float32 CPU tensor
// computed in diffusers' order, so a step reproduces diffusers bit for bit
// on the same libtorch.
type DDPM struct {
	*schedule
}

// NewDDPM builds the scheduler's noise schedule. Close frees it.
func NewDDPM(cfg Config) (*DDPM, error) {
	switch cfg.VarianceType {
	case "fixed_small", "fixed_small_log", "fixed_large", "learned", "learned_range":
	default:
		return nil, fmt.Errorf("scheduler config: variance_type %q is not supported", cfg.VarianceType)
	}
	s, err := newSchedule(cfg)
	if err != nil {
		return nil, err
	}
	return &DDPM{schedule: s}, nil
}

// SetTimesteps chooses n inference timesteps (set_timesteps).
func (d *DDPM) SetTimesteps(n int) error {
	ts, err := inferenceTimesteps(d.cfg, n)
	if err != nil {
		return err
	}
	d.timesteps, d.numInferenceSteps = ts, n
	return nil
}

// PreviousTimestep is the timestep after t in the inference schedule (−1
// after the last); t−1 before SetTimesteps. It panics with a *torch.Error
// when t is not in the schedule.
func (d *DDPM) PreviousTimestep(t int64) int64 {
	if d.numInferenceSteps == 0 {
		return t - 1
	}
	i := slices.Index(d.timesteps, t)
	if i < 0 {
		torch.Errorf("ddpm.step", "timestep %d is not in the schedule %v", t, d.timesteps)
	}
	if i == len(d.timesteps)-1 {
		return -1
	}
	return d.timesteps[i+1]
}

// alphaProdPrev is ᾱ[prev_t], or 1 before the first training timestep.
func (d *DDPM) alphaProdPrev(prev int64) *torch.Tensor {
	if prev >= 0 {
		return d.alphaProd(prev)
	}
	return d.one
}

// variance is _get_variance(t, predicted_variance) as a 0-d tensor (or
// predVar's shape for the learned types).
func (d *DDPM) variance(t int64, predVar *torch.Tensor) *torch.Tensor {
	s := torch.NewScope()
	defer s.Close()
	a := d.alphaProd(t)
	aPrev := d.alphaProdPrev(d.PreviousTimestep(t))
	curB := a.Div(aPrev).RSub(1)
	v := aPrev.RSub(1).Div(a.RSub(1)).Mul(curB)
	switch d.cfg.VarianceType {
	case "fixed_small":
		v = v.ClampMin(1e-20)
	case "fixed_small_log":
		v = v.ClampMin(1e-20).Log().MulScalar(0.5).Exp()
	case "fixed_large":
		v = curB
	case "learned":
		v = predVar
	case "learned_range":
		minLog := v.Log()
		maxLog := curB.Log()
		frac := predVar.AddScalar(1).DivScalar(2)
		v = frac.Mul(maxLog).Add(frac.RSub(1).Mul(minLog))
	}
	return s.Keep(v)
}

// Variance is the (clamped) posterior variance of step t for the
// fixed_small and fixed_large variance types.
func (d *DDPM) Variance(t int64) (v float64, err error) {
	defer torch.Recover(&err)
	switch d.cfg.VarianceType {
	case "fixed_small", "fixed_large":
	default:
		return 0, fmt.Errorf("ddpm: variance of type %q depends on the model output", d.cfg.VarianceType)
	}
	x := d.variance(t, nil)
	defer x.Close()
	return x.Item(), nil
}

// Step is DDPMScheduler.step: from the model output at timestep t and the
// sample x_t it returns x_{t_prev} and the predicted x̂0. For t > 0 it
// draws the variance noise from gen like diffusers' randn_tensor (see
// DrawNoise; nil gen: libtorch's default generator), including the last
// step (t = 1 with the SD2 schedule) where the variance is clamped to
// 1e-20. It panics with a *torch.Error on bad input (a timestep outside
// the schedule, mismatched shapes).
func (d *DDPM) Step(modelOutput *torch.Tensor, t int64, sample *torch.Tensor, gen *torch.Generator) (prev, predX0 *torch.Tensor) {
	var noise *torch.Tensor
	if t > 0 {
		noise = DrawNoise(modelOutput, gen)
		defer noise.Close()
	}
	return d.StepWithNoise(modelOutput, t, sample, noise)
}

// StepWithNoise is Step with the variance noise given (as diffusers'
// pipelines never do, but tests and training need): noise may be nil only
// when t is 0.
func (d *DDPM) StepWithNoise(modelOutput *torch.Tensor, t int64, sample, noise *torch.Tensor) (prev, predX0 *torch.Tensor) {
	s := torch.NewScope()
	defer s.Close()
	var predVar *torch.Tensor
	learned := d.cfg.VarianceType == "learned" || d.cfg.VarianceType == "learned_range"
	if learned && modelOutput.Size(1) == 2*sample.Size(1) {
		parts := modelOutput.Split(sample.Size(1), 1)
		modelOutput, predVar = parts[0], parts[1]
	} else if learned {
		torch.Errorf("ddpm.step", "variance_type %s needs a model output with %d channels, got %d", d.cfg.VarianceType, 2*sample.Size(1), modelOutput.Size(1))
	}

	// 1. ᾱ and β̄ of t and of the previous timestep.
	a := d.alphaProd(t)
	aPrev := d.alphaProdPrev(d.PreviousTimestep(t))
	b := a.RSub(1)
	bPrev := aPrev.RSub(1)
	curA := a.Div(aPrev)
	curB := curA.RSub(1)

	// 2. x̂0 from the model output.
	x0 := predictX0(d.cfg.PredictionType, modelOutput, sample, a, b)

	// 3. Clip.
	if d.cfg.ClipSample {
		x0 = x0.Clamp(-d.cfg.ClipSampleRange, d.cfg.ClipSampleRange)
	}

	// 4–5. The posterior mean μ̃(x_t, x̂0).
	c0 := aPrev.Sqrt().Mul(curB).Div(b)
	c1 := curA.Sqrt().Mul(bPrev).Div(b)
	prev = c0.Mul(x0).Add(c1.Mul(sample))

	// 6. Noise.
	if t > 0 {
		if noise == nil {
			torch.Errorf("ddpm.step", "timestep %d needs variance noise", t)
		}
		v := d.variance(t, predVar)
		switch d.cfg.VarianceType {
		case "fixed_small_log":
			v = v.Mul(noise)
		case "learned_range":
			v = v.MulScalar(0.5).Exp().Mul(noise)
		default:
			v = v.Sqrt().Mul(noise)
		}
		prev = prev.Add(v)
	}
	s.Keep(prev, x0)
	return prev, x0
}

// predictX0 is step 2 of DDPM and DDIM: x̂0 for the prediction type, with
// a = ᾱ_t and b = 1 − ᾱ_t.
func predictX0(kind string, out, x, a, b *torch.Tensor) *torch.Tensor {
	switch kind {
	case "epsilon":
		return x.Sub(b.Sqrt().Mul(out)).Div(a.Sqrt())
	case "sample":
		return out.Alias()
	case "v_prediction":
		return a.Sqrt().Mul(x).Sub(b.Sqrt().Mul(out))
	}
	torch.Errorf("scheduler", "prediction_type %q", kind)
	return nil
}
