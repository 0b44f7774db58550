package scheduler

import (
	"fmt"
	"math"
)

// Schedule is the state set_timesteps leaves: Sigmas holds the N shifted
// noise levels followed by the terminal 0 (N+1 values), Timesteps the N
// values σ·num_train_timesteps, both float32 as diffusers holds them.
type Schedule struct {
	Sigmas    []float32
	Timesteps []float32
	// Mu is the dynamic shift used (0 with a static shift).
	Mu float64
}

// Steps is the number of denoising steps, N.
func (s *Schedule) Steps() int { return len(s.Timesteps) }

// PipelineSigmas is the FLUX pipelines' unshifted schedule
// np.linspace(1.0, 1/n, n) (float64, numpy's formula: start + i·step with
// the last value set to the end point), cast to float32 as set_timesteps
// does.
func PipelineSigmas(n int) []float32 {
	out := make([]float32, n)
	if n == 0 {
		return out
	}
	start, stop := 1.0, 1/float64(n)
	if n == 1 {
		out[0] = float32(start)
		return out
	}
	step := (stop - start) / float64(n-1)
	for i := range out {
		out[i] = float32(float64(float64(i)*step) + start)
	}
	out[n-1] = float32(stop)
	return out
}

// TimeShift is the exponential time shift exp(μ)/(exp(μ) + (1/σ − 1)^1)
// evaluated as diffusers does on a float32 array: exp(μ) rounded to
// float32, then every operation in float32.
func TimeShift(mu float64, sigmas []float32) []float32 {
	e := float32(math.Exp(mu))
	out := make([]float32, len(sigmas))
	for i, s := range sigmas {
		inv := float32(1) / s
		out[i] = e / (e + (inv - 1))
	}
	return out
}

// staticShift is shift·σ/(1 + (shift−1)·σ) in float32, the schedule without
// dynamic shifting.
func staticShift(shift float64, sigmas []float32) []float32 {
	sh := float32(shift)
	out := make([]float32, len(sigmas))
	for i, s := range sigmas {
		out[i] = float32(sh*s) / (1 + float32((sh-1)*s))
	}
	return out
}

// SetTimesteps is set_timesteps(sigmas=…, mu=…): the given unshifted
// sigmas are shifted (exponentially with μ when use_dynamic_shifting, else
// with the static shift, μ ignored), timesteps = σ·num_train_timesteps, and
// the terminal 0 (1 with invert_sigmas) is appended.
func (c Config) SetTimesteps(sigmas []float32, mu float64) (*Schedule, error) {
	if err := c.Validate(); err != nil {
		return nil, err
	}
	if len(sigmas) == 0 {
		return nil, fmt.Errorf("flow-match scheduler: no sigmas")
	}
	for i, s := range sigmas {
		if !(s > 0 && s <= 1) {
			return nil, fmt.Errorf("flow-match scheduler: sigma %d is %v, want (0, 1]", i, s)
		}
	}
	var shifted []float32
	if c.UseDynamicShifting {
		shifted = TimeShift(mu, sigmas)
	} else {
		shifted = staticShift(c.Shift, sigmas)
		mu = 0
	}
	n := float32(c.NumTrainTimesteps)
	s := &Schedule{Mu: mu, Timesteps: make([]float32, len(shifted)), Sigmas: make([]float32, 0, len(shifted)+1)}
	for i, v := range shifted {
		if c.InvertSigmas {
			v = 1 - v
		}
		s.Timesteps[i] = v * n
		s.Sigmas = append(s.Sigmas, v)
	}
	if c.InvertSigmas {
		s.Sigmas = append(s.Sigmas, 1)
	} else {
		s.Sigmas = append(s.Sigmas, 0)
	}
	return s, nil
}

// PipelineSchedule is the schedule FluxPipeline and FluxControlNetPipeline
// set for steps denoising steps on an image of imageSeqLen packed tokens:
// PipelineSigmas(steps), μ = Mu(imageSeqLen), SetTimesteps.
func (c Config) PipelineSchedule(steps, imageSeqLen int) (*Schedule, error) {
	if steps < 1 {
		return nil, fmt.Errorf("flow-match scheduler: steps must be positive, got %d", steps)
	}
	if imageSeqLen < 1 {
		return nil, fmt.Errorf("flow-match scheduler: image sequence length must be positive, got %d", imageSeqLen)
	}
	return c.SetTimesteps(PipelineSigmas(steps), c.Mu(imageSeqLen))
}

// TrainSchedule is the scheduler's state right after construction, which
// the training recipes index: timesteps num_train_timesteps…1 and sigmas
// timesteps/num_train_timesteps (float32), statically shifted unless
// use_dynamic_shifting; then timesteps = σ·num_train_timesteps. Its Sigmas
// has no terminal value (length num_train_timesteps).
func (c Config) TrainSchedule() (*Schedule, error) {
	if err := c.Validate(); err != nil {
		return nil, err
	}
	n := c.NumTrainTimesteps
	nf := float32(n)
	sig := make([]float32, n)
	for i := range sig {
		// np.linspace(1, n, n, dtype=float32)[::-1]: exact integers.
		sig[i] = float32(n-i) / nf
	}
	if !c.UseDynamicShifting {
		sh := float32(c.Shift)
		for i, s := range sig {
			sig[i] = float32(sh*s) / (1 + float32((sh-1)*s))
		}
	}
	s := &Schedule{Sigmas: sig, Timesteps: make([]float32, n)}
	for i, v := range sig {
		s.Timesteps[i] = v * nf
	}
	return s, nil
}

// IndexForTimestep is index_for_timestep: the position of t among the
// schedule's timesteps, the second one when t occurs more than once.
func (s *Schedule) IndexForTimestep(t float32) (int, error) {
	first := -1
	for i, v := range s.Timesteps {
		if v == t {
			if first >= 0 {
				return i, nil
			}
			first = i
		}
	}
	if first < 0 {
		return 0, fmt.Errorf("flow-match scheduler: timestep %v is not in the schedule", t)
	}
	return first, nil
}
