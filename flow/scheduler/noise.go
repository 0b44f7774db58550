package scheduler

import (
	"fmt"
	"math"

	"github.com/dp2osr/dp2o/torch"
)

// sigmaColumn holds per-sample σ (B) as a float32 tensor of shape
// (B, 1, …, 1) with ndim dimensions, on dev, as the reference's
// sigma.unsqueeze(-1) loop builds it.
func sigmaColumn(sigmas []float32, ndim int, dev torch.Device) *torch.Tensor {
	shape := make([]int64, ndim)
	for i := range shape {
		shape[i] = 1
	}
	shape[0] = int64(len(sigmas))
	sc := torch.NewScope()
	defer sc.Close()
	t := torch.FromSlice(sigmas, shape...)
	if dev != torch.CPU {
		t = t.ToDevice(dev)
	}
	return sc.Keep(t)
}

// Interpolate is the flow-matching forward process of the FLUX training
// recipe: x_σ = (1 − σ)·x0 + σ·ε per sample, σ one value per batch row of
// x0 (B, …). σ is cast to x0's dtype first, as get_sigmas does.
func Interpolate(x0, noise *torch.Tensor, sigmas []float32) (xt *torch.Tensor, err error) {
	if err := sameShape(x0, noise, "sample", "noise"); err != nil {
		return nil, err
	}
	if int64(len(sigmas)) != x0.Size(0) {
		return nil, fmt.Errorf("flow-match scheduler: %d sigmas for a batch of %d", len(sigmas), x0.Size(0))
	}
	defer torch.Recover(&err)
	sc := torch.NewScope()
	defer sc.Close()
	s := sigmaColumn(sigmas, x0.Dim(), x0.Device())
	if s.DType() != x0.DType() {
		s = s.To(x0.DType())
	}
	return sc.Keep(s.RSub(1).Mul(x0).Add(s.Mul(noise))), nil
}

// VelocityTarget is the flow-matching regression target ε − x0.
func VelocityTarget(x0, noise *torch.Tensor) (v *torch.Tensor, err error) {
	if err := sameShape(x0, noise, "sample", "noise"); err != nil {
		return nil, err
	}
	defer torch.Recover(&err)
	return noise.Sub(x0), nil
}

// ScaleNoise is scale_noise(x0, timesteps, ε) of a scheduler with no begin
// index: σ looked up per sample with IndexForTimestep, then
// σ·ε + (1 − σ)·x0.
func (s *Schedule) ScaleNoise(x0 *torch.Tensor, timesteps []float32, noise *torch.Tensor) (*torch.Tensor, error) {
	if s == nil {
		return nil, fmt.Errorf("flow-match scheduler: scale_noise without a schedule")
	}
	sig := make([]float32, len(timesteps))
	for i, t := range timesteps {
		k, err := s.IndexForTimestep(t)
		if err != nil {
			return nil, err
		}
		sig[i] = s.Sigmas[k]
	}
	return Interpolate(x0, noise, sig)
}

// Density selects the training timestep density of diffusers'
// compute_density_for_timestep_sampling, as train_controlnet_flux.py uses
// it (its defaults: logit_normal, mean 0, std 1, mode scale 1.29), with the
// optional rejection sampling of the copy in DP²O-SR's
// utils_self/wavelet_color_fix.py (values kept only in [MinVal, MaxVal],
// which hints at the unreleased trainer's truncated density).
type Density struct {
	// Scheme is "logit_normal", "mode", or anything else for uniform
	// (the recipe's "none", "sigma_sqrt", "cosmap").
	Scheme    string
	LogitMean float64
	LogitStd  float64
	ModeScale float64
	// RejectionSampling draws 2·batch values at a time and keeps those in
	// [MinVal, MaxVal] until batch are collected.
	RejectionSampling bool
	MinVal, MaxVal    float64
}

// DefaultDensity is the FLUX ControlNet training recipe's default density.
func DefaultDensity() Density {
	return Density{Scheme: "logit_normal", LogitMean: 0, LogitStd: 1, ModeScale: 1.29, MinVal: 0, MaxVal: 1}
}

// sampleOnce is the reference's sample_once(n).
func (d Density) sampleOnce(n int64, gen *torch.Generator) *torch.Tensor {
	sc := torch.NewScope()
	defer sc.Close()
	shape := []int64{n}
	var t *torch.Tensor
	switch d.Scheme {
	case "logit_normal":
		t = torch.Normal(shape, d.LogitMean, d.LogitStd, gen, torch.Float32, torch.CPU).Sigmoid()
	case "mode":
		// 1 − u − scale·(cos(π·u/2)² − 1 + u), in the reference's order.
		r := torch.Rand(shape, gen, torch.Float32, torch.CPU)
		c := r.MulScalar(math.Pi).DivScalar(2).Cos()
		t = r.RSub(1).Sub(c.Mul(c).SubScalar(1).Add(r).MulScalar(d.ModeScale))
	default:
		t = torch.Rand(shape, gen, torch.Float32, torch.CPU)
	}
	return sc.Keep(t)
}

// SampleU draws batch values from the density with gen (a CPU generator,
// as the reference draws on the CPU): logit_normal is
// sigmoid(normal(mean, std)); mode is 1 − u − scale·(cos²(πu/2) − 1 + u)
// of a uniform u; otherwise uniform; with RejectionSampling only values in
// [MinVal, MaxVal] are kept.
func (d Density) SampleU(batch int, gen *torch.Generator) (u []float32, err error) {
	if batch < 1 {
		return nil, fmt.Errorf("flow-match scheduler: batch must be positive, got %d", batch)
	}
	if d.RejectionSampling && !(d.MinVal <= d.MaxVal) {
		return nil, fmt.Errorf("flow-match scheduler: rejection interval [%v, %v] is empty", d.MinVal, d.MaxVal)
	}
	defer torch.Recover(&err)
	if !d.RejectionSampling {
		t := d.sampleOnce(int64(batch), gen)
		defer t.Close()
		return t.Float32s(), nil
	}
	const maxRounds = 10000
	for round := 0; len(u) < batch; round++ {
		if round == maxRounds {
			return nil, fmt.Errorf("flow-match scheduler: rejection sampling kept %d of %d values in [%v, %v] after %d rounds", len(u), batch, d.MinVal, d.MaxVal, maxRounds)
		}
		t := d.sampleOnce(int64(2*batch), gen)
		for _, v := range t.Float32s() {
			if v >= float32(d.MinVal) && v <= float32(d.MaxVal) { // compared in float32, as torch does
				u = append(u, v)
			}
		}
		t.Close()
	}
	return u[:batch], nil
}

// TrainingDraw is one batch of training noise levels.
type TrainingDraw struct {
	U         []float32 // the density's draws
	Indices   []int     // int(u·num_train_timesteps) into the training schedule
	Timesteps []float32 // the models get Timesteps/1000
	Sigmas    []float32 // σ of each sample, for Interpolate
}

// SampleTraining draws per-sample training timesteps as
// train_controlnet_flux.py does: u from the density, indices =
// (u·num_train_timesteps).long(), timesteps = TrainSchedule().Timesteps[indices]
// and σ from the schedule's sigmas at the (first) matching timestep.
func (c Config) SampleTraining(d Density, batch int, gen *torch.Generator) (*TrainingDraw, error) {
	ts, err := c.TrainSchedule()
	if err != nil {
		return nil, err
	}
	u, err := d.SampleU(batch, gen)
	if err != nil {
		return nil, err
	}
	out := &TrainingDraw{U: u}
	n := float32(c.NumTrainTimesteps)
	for _, v := range u {
		k := int(float32(v * n)) // .long() truncates toward zero
		if k < 0 || k >= len(ts.Timesteps) {
			return nil, fmt.Errorf("flow-match scheduler: density value %v outside [0, 1)", v)
		}
		t := ts.Timesteps[k]
		j := k
		for i, x := range ts.Timesteps { // get_sigmas: (schedule == t).nonzero()
			if x == t {
				j = i
				break
			}
		}
		out.Indices = append(out.Indices, k)
		out.Timesteps = append(out.Timesteps, t)
		out.Sigmas = append(out.Sigmas, ts.Sigmas[j])
	}
	return out, nil
}
