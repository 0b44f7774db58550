package scheduler

import (
	"math"

	"github.com/dp2osr/dp2o/torch"
)

// schedule holds what DDPM and DDIM share: the float32 noise schedule (CPU
// tensors, as diffusers keeps them), the inference timesteps and the
// training-side helpers.
type schedule struct {
	cfg           Config
	betas         *torch.Tensor // (T,) float32
	alphas        *torch.Tensor // 1 − β
	alphasCumprod *torch.Tensor // ᾱ = cumprod(α), index = timestep
	one           *torch.Tensor // torch.tensor(1.0)

	numInferenceSteps int
	timesteps         []int64
}

func newSchedule(cfg Config) (s *schedule, err error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	defer torch.Recover(&err)
	sc := torch.NewScope()
	defer sc.Close()
	betas := makeBetas(cfg)
	if cfg.RescaleBetasZeroSNR {
		betas = rescaleZeroTerminalSNR(betas)
	}
	alphas := betas.RSub(1)
	s = &schedule{
		cfg:           cfg,
		betas:         torch.Unscope(betas),
		alphas:        torch.Unscope(alphas),
		alphasCumprod: torch.Unscope(alphas.Cumprod(0)),
		one:           torch.Unscope(torch.Scalar(1)),
	}
	T := int64(cfg.NumTrainTimesteps)
	s.timesteps = make([]int64, T)
	for i := range s.timesteps {
		s.timesteps[i] = T - 1 - int64(i)
	}
	return s, nil
}

// makeBetas is the β schedule of diffusers' __init__, in float32.
func makeBetas(c Config) *torch.Tensor {
	n := int64(c.NumTrainTimesteps)
	if c.TrainedBetas != nil {
		b := make([]float32, len(c.TrainedBetas))
		for i, v := range c.TrainedBetas {
			b[i] = float32(v)
		}
		return torch.FromSlice(b)
	}
	switch c.BetaSchedule {
	case "linear":
		return torch.Linspace(c.BetaStart, c.BetaEnd, n, torch.Float32, torch.CPU)
	case "scaled_linear":
		s := torch.NewScope()
		defer s.Close()
		l := torch.Linspace(math.Pow(c.BetaStart, 0.5), math.Pow(c.BetaEnd, 0.5), n, torch.Float32, torch.CPU)
		return s.Keep(l.Pow(2))
	case "squaredcos_cap_v2":
		return cosineBetas(int(n), 0.999)
	case "sigmoid":
		s := torch.NewScope()
		defer s.Close()
		l := torch.Linspace(-6, 6, n, torch.Float32, torch.CPU)
		return s.Keep(l.Sigmoid().MulScalar(c.BetaEnd - c.BetaStart).AddScalar(c.BetaStart))
	}
	torch.Errorf("scheduler", "beta_schedule %q is not implemented", c.BetaSchedule)
	return nil
}

// cosineBetas is diffusers' betas_for_alpha_bar with the cosine ᾱ(t) of
// Improved DDPM, computed in float64 and stored as float32.
func cosineBetas(n int, maxBeta float64) *torch.Tensor {
	alphaBar := func(t float64) float64 {
		c := math.Cos((t + 0.008) / 1.008 * math.Pi / 2)
		return c * c
	}
	b := make([]float32, n)
	for i := range n {
		t1 := float64(i) / float64(n)
		t2 := float64(i+1) / float64(n)
		b[i] = float32(min(1-alphaBar(t2)/alphaBar(t1), maxBeta))
	}
	return torch.FromSlice(b)
}

// rescaleZeroTerminalSNR is diffusers' rescale_zero_terminal_snr: shift and
// scale √ᾱ so that the last timestep has zero SNR, keeping the first.
func rescaleZeroTerminalSNR(betas *torch.Tensor) *torch.Tensor {
	s := torch.NewScope()
	defer s.Close()
	n := betas.Size(0)
	abar := betas.RSub(1).Cumprod(0).Sqrt()
	first := abar.Select(0, 0).Clone()
	last := abar.Select(0, n-1).Clone()
	abar = abar.Sub(last)
	abar = abar.Mul(first.Div(first.Sub(last)))
	ab := abar.Pow(2)
	alphas := torch.Cat([]*torch.Tensor{ab.Slice(0, 0, 1, 1), ab.Slice(0, 1, n, 1).Div(ab.Slice(0, 0, n-1, 1))}, 0)
	return s.Keep(alphas.RSub(1))
}

// Close frees the schedule's tensors.
func (s *schedule) Close() {
	s.betas.Close()
	s.alphas.Close()
	s.alphasCumprod.Close()
	s.one.Close()
}

// Config is the scheduler's configuration.
func (s *schedule) Config() Config { return s.cfg }

// Betas is β (T,) float32 on the CPU; the scheduler owns it.
func (s *schedule) Betas() *torch.Tensor { return s.betas }

// AlphasCumprod is ᾱ (T,) float32 on the CPU, indexed by timestep; the
// scheduler owns it.
func (s *schedule) AlphasCumprod() *torch.Tensor { return s.alphasCumprod }

// InitNoiseSigma is the standard deviation of the initial noise (1 for
// DDPM and DDIM).
func (s *schedule) InitNoiseSigma() float64 { return 1 }

// ScaleModelInput returns sample itself (the same *Tensor): DDPM and DDIM
// do not scale the model input.
func (s *schedule) ScaleModelInput(sample *torch.Tensor, t int64) *torch.Tensor { return sample }

// NumInferenceSteps is the step count of the last SetTimesteps (0 before).
func (s *schedule) NumInferenceSteps() int { return s.numInferenceSteps }

// Timesteps returns the inference timesteps, in the order they are used
// (descending); before SetTimesteps, every training timestep T−1 … 0.
func (s *schedule) Timesteps() []int64 { return append([]int64(nil), s.timesteps...) }

// alphaProd is ᾱ[t] as a 0-d float32 CPU tensor.
func (s *schedule) alphaProd(t int64) *torch.Tensor {
	if t < 0 || t >= int64(s.cfg.NumTrainTimesteps) {
		torch.Errorf("scheduler", "timestep %d out of range [0, %d)", t, s.cfg.NumTrainTimesteps)
	}
	return s.alphasCumprod.Select(0, t)
}
