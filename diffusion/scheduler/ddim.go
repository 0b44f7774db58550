package scheduler

import (
	"fmt"

	"github.com/dp2osr/dp2o/torch"
)

// DDIM is diffusers' DDIMScheduler. Eta 0 (the default) is the
// deterministic sampler; eta > 0 draws noise from the step's generator.
type DDIM struct {
	*schedule
	// Eta weighs the added noise (η of the DDIM paper), 0 by default.
	Eta float64
	// UseClippedModelOutput re-derives ε from the clipped x̂0.
	UseClippedModelOutput bool

	finalAlphaCumprod *torch.Tensor // borrowed: one or ᾱ[0]
}

// NewDDIM builds the scheduler's noise schedule. Close frees it.
func NewDDIM(cfg Config) (*DDIM, error) {
	s, err := newSchedule(cfg)
	if err != nil {
		return nil, err
	}
	d := &DDIM{schedule: s}
	if cfg.SetAlphaToOne {
		d.finalAlphaCumprod = s.one
	} else {
		d.finalAlphaCumprod = s.alphasCumprod.Select(0, 0)
		torch.Unscope(d.finalAlphaCumprod)
	}
	return d, nil
}

// Close frees the schedule.
func (d *DDIM) Close() {
	if d.finalAlphaCumprod != d.one {
		d.finalAlphaCumprod.Close()
	}
	d.schedule.Close()
}

// FinalAlphaCumprod is the ᾱ used when the previous timestep is negative:
// 1 with set_alpha_to_one, else ᾱ[0].
func (d *DDIM) FinalAlphaCumprod() float64 { return d.finalAlphaCumprod.Item() }

// SetTimesteps chooses n inference timesteps (set_timesteps).
func (d *DDIM) SetTimesteps(n int) error {
	ts, err := inferenceTimesteps(d.cfg, n)
	if err != nil {
		return err
	}
	d.timesteps, d.numInferenceSteps = ts, n
	return nil
}

// PreviousTimestep is t − T // n, as DDIM computes it whatever the spacing
// (negative past the end). It panics with a *torch.Error before
// SetTimesteps.
func (d *DDIM) PreviousTimestep(t int64) int64 {
	if d.numInferenceSteps == 0 {
		torch.Errorf("ddim.step", "call SetTimesteps before Step")
	}
	return t - int64(d.cfg.NumTrainTimesteps/d.numInferenceSteps)
}

func (d *DDIM) alphaProdPrev(prev int64) *torch.Tensor {
	if prev >= 0 {
		return d.alphaProd(prev)
	}
	return d.finalAlphaCumprod
}

// Step is DDIMScheduler.step with the scheduler's Eta: it returns
// x_{t_prev} and the predicted x̂0. gen is used only when Eta > 0. It
// panics with a *torch.Error on bad input.
func (d *DDIM) Step(modelOutput *torch.Tensor, t int64, sample *torch.Tensor, gen *torch.Generator) (prev, predX0 *torch.Tensor) {
	var noise *torch.Tensor
	if d.Eta > 0 {
		noise = DrawNoise(modelOutput, gen)
		defer noise.Close()
	}
	return d.StepWithNoise(modelOutput, t, sample, noise)
}

// StepWithNoise is Step with the variance noise given (used only when
// Eta > 0; nil otherwise).
func (d *DDIM) StepWithNoise(modelOutput *torch.Tensor, t int64, sample, noise *torch.Tensor) (prev, predX0 *torch.Tensor) {
	s := torch.NewScope()
	defer s.Close()
	prevT := d.PreviousTimestep(t)
	a := d.alphaProd(t)
	aPrev := d.alphaProdPrev(prevT)
	b := a.RSub(1)

	var eps *torch.Tensor
	x0 := predictX0(d.cfg.PredictionType, modelOutput, sample, a, b)
	switch d.cfg.PredictionType {
	case "epsilon":
		eps = modelOutput
	case "sample":
		eps = sample.Sub(a.Sqrt().Mul(x0)).Div(b.Sqrt())
	case "v_prediction":
		eps = a.Sqrt().Mul(modelOutput).Add(b.Sqrt().Mul(sample))
	}
	if d.cfg.ClipSample {
		x0 = x0.Clamp(-d.cfg.ClipSampleRange, d.cfg.ClipSampleRange)
	}

	// σ_t = η·√variance.
	bPrev := aPrev.RSub(1)
	variance := bPrev.Div(b).Mul(a.Div(aPrev).RSub(1))
	std := variance.Sqrt().MulScalar(d.Eta)
	if d.UseClippedModelOutput {
		eps = sample.Sub(a.Sqrt().Mul(x0)).Div(b.Sqrt())
	}
	dir := aPrev.RSub(1).Sub(std.Pow(2)).Sqrt().Mul(eps)
	prev = aPrev.Sqrt().Mul(x0).Add(dir)
	if d.Eta > 0 {
		if noise == nil {
			torch.Errorf("ddim.step", "eta %g needs variance noise", d.Eta)
		}
		prev = prev.Add(std.Mul(noise))
	}
	s.Keep(prev, x0)
	return prev, x0
}

// String describes the scheduler.
func (d *DDIM) String() string {
	return fmt.Sprintf("DDIM(%d steps, %s spacing, eta %g)", d.numInferenceSteps, d.cfg.TimestepSpacing, d.Eta)
}
