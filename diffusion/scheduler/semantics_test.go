package scheduler

import (
	"math"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/dp2osr/dp2o/internal/testutil"
	"github.com/dp2osr/dp2o/torch"
)

func sd2Config() Config {
	c := DefaultConfig()
	c.BetaStart, c.BetaEnd, c.BetaSchedule = 0.00085, 0.012, "scaled_linear"
	c.ClipSample, c.SetAlphaToOne, c.StepsOffset = false, false, 1
	return c
}

func TestSpacing(t *testing.T) {
	testutil.NoLeak(t)
	c := sd2Config()
	for _, tc := range []struct {
		spacing string
		offset  int
		n       int
		want    []int64
	}{
		// np.round(np.arange(1000, 0, -1000/7)) − 1
		{"trailing", 0, 7, []int64{999, 856, 713, 570, 428, 285, 142}},
		{"trailing", 0, 4, []int64{999, 749, 499, 249}},
		// np.linspace(0, 999, 7).round(): 166.5, 499.5 and 832.5 round half to even.
		{"linspace", 0, 7, []int64{999, 832, 666, 500, 333, 166, 0}},
		{"leading", 0, 4, []int64{750, 500, 250, 0}},
		{"leading", 1, 3, []int64{667, 334, 1}},
	} {
		c.TimestepSpacing, c.StepsOffset = tc.spacing, tc.offset
		d := newDDPM(t, c, tc.n)
		require.Equal(t, tc.want, d.Timesteps(), "%s %d", tc.spacing, tc.n)
	}
	c.TimestepSpacing = "trailing"
	d := newDDPM(t, c, 50)
	ts := d.Timesteps()
	require.Len(t, ts, 50)
	require.Equal(t, int64(999), ts[0])
	require.Equal(t, int64(19), ts[49])

	require.Error(t, d.SetTimesteps(0))
	require.ErrorContains(t, d.SetTimesteps(1001), "exceed")
}

func randn(shape []int64, seed uint64) *torch.Tensor {
	return torch.Randn(shape, torch.MustGenerator(torch.CPU, seed), torch.Float32, torch.CPU)
}

func maxAbs(a, b *torch.Tensor) float64 {
	s := torch.NewScope()
	defer s.Close()
	return a.Sub(b).Abs().Max().Item()
}

// TestPredictionTypesRecoverX0: a model that predicts its target exactly
// (ε, v or x0 of a sample diffused with AddNoise) makes every step predict
// the clean sample.
func TestPredictionTypesRecoverX0(t *testing.T) {
	testutil.NoLeak(t)
	s := torch.NewScope()
	defer s.Close()
	x0 := randn([]int64{2, 4, 8, 8}, 1).MulScalar(0.5)
	eps := randn([]int64{2, 4, 8, 8}, 2)
	for _, pt := range []string{"epsilon", "v_prediction", "sample"} {
		c := sd2Config()
		c.PredictionType = pt
		for _, sch := range []Scheduler{newDDPM(t, c, 20), newDDIM(t, c, 20)} {
			for _, ti := range sch.Timesteps() {
				tt := torch.FromSlice([]int64{ti, ti})
				xt := sch.AddNoise(x0, eps, tt)
				var out *torch.Tensor
				switch pt {
				case "epsilon":
					out = eps
				case "v_prediction":
					out = sch.Velocity(x0, eps, tt)
				case "sample":
					out = x0
				}
				_, pred := sch.Step(out, ti, xt, torch.MustGenerator(torch.CPU, 3))
				// ε-prediction divides by √ᾱ_t (≈0.076 at t = 951).
				require.Less(t, maxAbs(pred, x0), 2e-5, "%s t=%d", pt, ti)
			}
		}
	}
}

func TestClipSample(t *testing.T) {
	testutil.NoLeak(t)
	s := torch.NewScope()
	defer s.Close()
	c := sd2Config()
	c.ClipSample, c.ClipSampleRange = true, 0.5
	x := randn([]int64{1, 4, 8, 8}, 4).MulScalar(3)
	eps := randn([]int64{1, 4, 8, 8}, 5)
	for _, sch := range []Scheduler{newDDPM(t, c, 10), newDDIM(t, c, 10)} {
		_, pred := sch.Step(eps, sch.Timesteps()[5], x, torch.MustGenerator(torch.CPU, 6))
		require.LessOrEqual(t, pred.Abs().Max().Item(), 0.5)
		require.Equal(t, 0.5, pred.Abs().Max().Item(), "some values clipped")
	}
}

// TestDDPMLastStepDrawsNoise: the step at t = 1 consumes the generator and
// adds std 1e-10 noise; at t = 0 nothing is drawn.
func TestDDPMLastStepDrawsNoise(t *testing.T) {
	testutil.NoLeak(t)
	s := torch.NewScope()
	defer s.Close()
	d := newDDPM(t, sd2Config(), 50)
	x := randn([]int64{1, 4, 4, 4}, 7)
	eps := randn([]int64{1, 4, 4, 4}, 8)
	g := torch.MustGenerator(torch.CPU, 9)
	prev, _ := d.Step(eps, 1, x, g)
	next := torch.Randn([]int64{1}, g, torch.Float32, torch.CPU)
	ref := torch.MustGenerator(torch.CPU, 9)
	torch.Randn([]int64{1, 4, 4, 4}, ref, torch.Float32, torch.CPU)
	require.Equal(t, torch.Randn([]int64{1}, ref, torch.Float32, torch.CPU).Item(), next.Item(), "one draw of the sample's shape")
	noNoise, _ := d.StepWithNoise(eps, 1, x, x.ZerosLike())
	require.Less(t, maxAbs(prev, noNoise), 1e-8)
	v, err := d.Variance(1)
	require.NoError(t, err)
	require.InDelta(t, 1e-20, v, 1e-27)

	c := sd2Config()
	c.StepsOffset = 0
	d0 := newDDPM(t, c, 50)
	require.Equal(t, int64(0), d0.Timesteps()[49])
	g0 := torch.MustGenerator(torch.CPU, 9)
	d0.Step(eps, 0, x, g0)
	ref0 := torch.MustGenerator(torch.CPU, 9)
	require.Equal(t, torch.Randn([]int64{1}, ref0, torch.Float32, torch.CPU).Item(), torch.Randn([]int64{1}, g0, torch.Float32, torch.CPU).Item(), "t = 0 draws nothing")
}

func TestDDIMEta(t *testing.T) {
	testutil.NoLeak(t)
	s := torch.NewScope()
	defer s.Close()
	d := newDDIM(t, sd2Config(), 10)
	x := randn([]int64{1, 4, 4, 4}, 10)
	eps := randn([]int64{1, 4, 4, 4}, 11)
	ti := d.Timesteps()[3]
	det, _ := d.Step(eps, ti, x, nil)
	d.Eta = 1
	noise := randn([]int64{1, 4, 4, 4}, 12)
	sto, _ := d.Step(eps, ti, x, torch.MustGenerator(torch.CPU, 12))
	sto2, _ := d.StepWithNoise(eps, ti, x, noise)
	require.Zero(t, maxAbs(sto, sto2), "Step draws like DrawNoise")
	// η = 1: σ_t² is the DDPM posterior variance; the mean shrinks the ε direction.
	ac := d.AlphasCumprod().Float64s()
	a, ap := ac[ti], ac[ti-100]
	sigma := math.Sqrt((1 - ap) / (1 - a) * (1 - a/ap))
	x0 := x.Sub(eps.MulScalar(math.Sqrt(1 - a))).DivScalar(math.Sqrt(a))
	want := x0.MulScalar(math.Sqrt(ap)).Add(eps.MulScalar(math.Sqrt(1 - ap - sigma*sigma))).Add(noise.MulScalar(sigma))
	require.Less(t, maxAbs(sto, want), 1e-5)
	require.Greater(t, maxAbs(sto, det), 0.01)
}

func TestBetaSchedules(t *testing.T) {
	testutil.NoLeak(t)
	c := DefaultConfig()
	d := newDDPM(t, c, 0)
	b := d.Betas().Float64s()
	require.InDelta(t, 1e-4, b[0], 1e-10)
	require.InDelta(t, 0.02, b[999], 1e-9)

	c.BetaSchedule = "squaredcos_cap_v2"
	b = newDDPM(t, c, 0).Betas().Float64s()
	ab := func(x float64) float64 { v := math.Cos((x + 0.008) / 1.008 * math.Pi / 2); return v * v }
	require.Equal(t, float32(1-ab(1.0/1000)/ab(0)), float32(b[0]))
	require.Equal(t, float32(0.999), float32(b[999]), "capped at max_beta")

	c.BetaSchedule = "sigmoid"
	b = newDDPM(t, c, 0).Betas().Float64s()
	require.InDelta(t, 1/(1+math.Exp(6))*(0.02-1e-4)+1e-4, b[0], 1e-8)

	c.BetaSchedule = "linear"
	c.TrainedBetas = []float64{0.1, 0.2, 0.3}
	c.NumTrainTimesteps = 3
	b = newDDPM(t, c, 0).Betas().Float64s()
	require.Equal(t, []float64{float64(float32(0.1)), float64(float32(0.2)), float64(float32(0.3))}, b)

	// Zero terminal SNR: ᾱ_T = 0 and ᾱ_0 kept.
	z := sd2Config()
	z.RescaleBetasZeroSNR = true
	orig := newDDPM(t, sd2Config(), 0).AlphasCumprod().Float64s()
	ac := newDDPM(t, z, 0).AlphasCumprod().Float64s()
	require.Zero(t, ac[999])
	require.InDelta(t, orig[0], ac[0], 1e-6)
}

func TestConfigErrors(t *testing.T) {
	_, err := ParseConfig([]byte(`{"prediction_type": "flow"}`))
	require.ErrorContains(t, err, "prediction_type")
	_, err = ParseConfig([]byte(`{"timestep_spacing": "karras"}`))
	require.ErrorContains(t, err, "timestep_spacing")
	_, err = ParseConfig([]byte(`{"thresholding": true}`))
	require.ErrorContains(t, err, "thresholding")
	_, err = NewDDPM(Config{NumTrainTimesteps: 10, BetaSchedule: "linear", PredictionType: "epsilon", TimestepSpacing: "leading", VarianceType: "weird"})
	require.ErrorContains(t, err, "variance_type")
	c, err := ParseConfig([]byte(`{"trained_betas": null, "skip_prk_steps": true}`))
	require.NoError(t, err)
	require.Equal(t, DefaultConfig(), c)
}

func TestStepPanicsOnUnknownTimestep(t *testing.T) {
	testutil.NoLeak(t)
	s := torch.NewScope()
	defer s.Close()
	d := newDDPM(t, sd2Config(), 10)
	x := torch.Zeros([]int64{1, 4, 2, 2}, torch.Float32, torch.CPU)
	err := torch.Try(func() { d.Step(x, 500, x, nil) })
	require.ErrorContains(t, err, "not in the schedule")
	ddim, err := NewDDIM(sd2Config())
	require.NoError(t, err)
	defer ddim.Close()
	require.ErrorContains(t, torch.Try(func() { ddim.Step(x, 500, x, nil) }), "SetTimesteps")
}
