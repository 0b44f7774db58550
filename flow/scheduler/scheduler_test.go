package scheduler

import (
	"encoding/json"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"sort"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/dp2osr/dp2o/internal/testutil"
	"github.com/dp2osr/dp2o/torch"
)

// report is the fixture's report.json.
type report struct {
	StepCase          string `json:"step_case"`
	StepIndices       []int  `json:"step_indices"`
	ScaleNoiseIndices []int  `json:"scale_noise_indices"`
	Cases             map[string]struct {
		Height, Width int
		ImageSeqLen   int     `json:"image_seq_len"`
		Steps         int     `json:"num_inference_steps"`
		Mu            float64 `json:"mu"`
		ExpMuFloat32  float64 `json:"exp_mu_float32"`
	} `json:"cases"`
}

type fixture struct {
	cfg Config
	rep report
	io  map[string]*torch.Tensor
}

func load(t *testing.T) fixture {
	t.Helper()
	root := testutil.Fixture(t, "flux/scheduler")
	cfg, err := LoadConfig(filepath.Join(root, "scheduler", "scheduler_config.json"))
	require.NoError(t, err)
	var rep report
	data, err := os.ReadFile(filepath.Join(root, "report.json"))
	require.NoError(t, err)
	require.NoError(t, json.Unmarshal(data, &rep))
	require.NotEmpty(t, rep.Cases)
	return fixture{cfg: cfg, rep: rep, io: testutil.Tensors(t, filepath.Join(root, "io.safetensors"))}
}

func (f fixture) tensor(t *testing.T, name string) *torch.Tensor {
	t.Helper()
	x, ok := f.io[name]
	require.True(t, ok, "fixture tensor %s missing", name)
	return x
}

func f32(t *testing.T, v []float32) *torch.Tensor {
	t.Helper()
	x := torch.Unscope(torch.FromSlice(v, int64(len(v))))
	t.Cleanup(x.Close)
	return x
}

func (f fixture) schedule(t *testing.T, name string) *Schedule {
	t.Helper()
	c := f.rep.Cases[name]
	s, err := f.cfg.PipelineSchedule(c.Steps, c.ImageSeqLen)
	require.NoError(t, err)
	return s
}

func sortedCases(r report) []string {
	names := make([]string, 0, len(r.Cases))
	for n := range r.Cases {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// TestPipelineSchedules checks μ, sigmas, timesteps and the timestep the
// models see, bit for bit, for every case.
func TestPipelineSchedules(t *testing.T) {
	testutil.NoLeak(t)
	f := load(t)
	for _, name := range sortedCases(f.rep) {
		c := f.rep.Cases[name]
		t.Run(name, func(t *testing.T) {
			require.Equal(t, (c.Height/16)*(c.Width/16), c.ImageSeqLen, "packed sequence length")
			require.Equal(t, c.Mu, f.cfg.Mu(c.ImageSeqLen), "mu")
			require.Equal(t, c.ExpMuFloat32, float64(float32(math.Exp(c.Mu))), "float32(exp(mu))")
			s := f.schedule(t, name)
			require.Equal(t, c.Steps, s.Steps())
			testutil.AssertEqual(t, name+".sigmas", f32(t, s.Sigmas), f.tensor(t, name+".sigmas"))
			testutil.AssertEqual(t, name+".timesteps", f32(t, s.Timesteps), f.tensor(t, name+".timesteps"))
			for _, dt := range []struct {
				suffix string
				dtype  torch.DType
			}{{"", torch.Float32}, {"_fp16", torch.Float16}} {
				var div, seen []*torch.Tensor
				for _, ts := range s.Timesteps {
					in := TimestepInput(ts, 1, dt.dtype, torch.CPU)
					div = append(div, in)
					seen = append(seen, in.MulScalar(1000))
				}
				d, sn := torch.Cat(div, 0), torch.Cat(seen, 0)
				if dt.dtype == torch.Float32 {
					testutil.AssertEqual(t, name+".timestep_div_1000", d, f.tensor(t, name+".timestep_div_1000"))
				}
				testutil.AssertEqual(t, name+".timestep_seen_by_model"+dt.suffix, sn, f.tensor(t, name+".timestep_seen_by_model"+dt.suffix))
				for _, x := range append(div, seen...) {
					x.Close()
				}
				d.Close()
				sn.Close()
			}
		})
	}
}

// TestInitialState checks the state after construction that training
// indexes.
func TestInitialState(t *testing.T) {
	testutil.NoLeak(t)
	f := load(t)
	s, err := f.cfg.TrainSchedule()
	require.NoError(t, err)
	testutil.AssertEqual(t, "init.sigmas", f32(t, s.Sigmas), f.tensor(t, "init.sigmas"))
	testutil.AssertEqual(t, "init.timesteps", f32(t, s.Timesteps), f.tensor(t, "init.timesteps"))
}

// TestEulerSteps checks single steps at the fixture's indices (float32 and
// float16) and a pipeline-style loop, bit for bit.
func TestEulerSteps(t *testing.T) {
	testutil.NoLeak(t)
	f := load(t)
	s := f.schedule(t, f.rep.StepCase)
	require.NotEmpty(t, f.rep.StepIndices)
	for _, i := range f.rep.StepIndices {
		for _, suffix := range []string{"", "_fp16"} {
			p := fmt.Sprintf("step.%d.", i)
			got := s.StepAt(i, f.tensor(t, p+"model_output"+suffix), f.tensor(t, p+"sample"+suffix))
			testutil.AssertEqual(t, p+"prev_sample"+suffix, got, f.tensor(t, p+"prev_sample"+suffix))
			got.Close()
		}
	}

	st := NewStepper(s)
	x := f.tensor(t, "loop.x0").Alias()
	n := 0
	for k := 0; ; k++ {
		v, ok := f.io[fmt.Sprintf("loop.model_output.%d", k)]
		if !ok {
			break
		}
		prev, err := st.Step(v, s.Timesteps[k], x)
		require.NoError(t, err)
		x.Close()
		x = prev
		testutil.AssertEqual(t, fmt.Sprintf("loop.x%d", k+1), x, f.tensor(t, fmt.Sprintf("loop.x%d", k+1)))
		n++
	}
	x.Close()
	require.Positive(t, n, "no loop.model_output.* in the fixture")
	require.Equal(t, n, st.StepIndex())
}

// TestNoising checks scale_noise and the training interpolation and target.
func TestNoising(t *testing.T) {
	testutil.NoLeak(t)
	f := load(t)
	s := f.schedule(t, f.rep.StepCase)
	x0, eps := f.tensor(t, "scale_noise.sample"), f.tensor(t, "scale_noise.noise")
	require.NotEmpty(t, f.rep.ScaleNoiseIndices)
	for _, i := range f.rep.ScaleNoiseIndices {
		p := fmt.Sprintf("scale_noise.%d.", i)
		got, err := s.ScaleNoise(x0, f.tensor(t, p+"timestep").Float32s(), eps)
		require.NoError(t, err)
		testutil.AssertEqual(t, p+"output", got, f.tensor(t, p+"output"))
		got.Close()
	}
	xt, err := Interpolate(x0, eps, f.tensor(t, "train.sigma").Float32s())
	require.NoError(t, err)
	defer xt.Close()
	testutil.AssertEqual(t, "train.x_sigma", xt, f.tensor(t, "train.x_sigma"))
	v, err := VelocityTarget(x0, eps)
	require.NoError(t, err)
	defer v.Close()
	testutil.AssertEqual(t, "train.target_v", v, f.tensor(t, "train.target_v"))
}

// TestTrainingDensity checks the recipe's timestep sampling against the
// same draws made by hand: u = sigmoid(normal), index = int(u·N), and that
// every sampled σ is the training schedule's σ at that timestep.
func TestTrainingDensity(t *testing.T) {
	testutil.NoLeak(t)
	f := load(t)
	ts, err := f.cfg.TrainSchedule()
	require.NoError(t, err)
	const batch = 64
	for _, d := range []Density{DefaultDensity(), {Scheme: "mode", ModeScale: DefaultDensity().ModeScale}, {Scheme: "none"}} {
		t.Run(d.Scheme, func(t *testing.T) {
			draw, err := f.cfg.SampleTraining(d, batch, torch.MustGenerator(torch.CPU, 7))
			require.NoError(t, err)
			u, err := d.SampleU(batch, torch.MustGenerator(torch.CPU, 7))
			require.NoError(t, err)
			require.Equal(t, u, draw.U, "same generator state, same draws")
			for i, v := range draw.U {
				require.True(t, v >= 0 && v < 1, "u=%v", v)
				k := draw.Indices[i]
				require.Equal(t, int(float32(v*float32(f.cfg.NumTrainTimesteps))), k)
				require.Equal(t, ts.Timesteps[k], draw.Timesteps[i])
				require.Equal(t, ts.Sigmas[k], draw.Sigmas[i])
			}
		})
	}
	// Rejection sampling keeps, in draw order, the values of 2·batch-sized
	// draws that fall in [MinVal, MaxVal].
	rd := DefaultDensity()
	rd.RejectionSampling, rd.MinVal, rd.MaxVal = true, 0.25, 0.75
	got, err := rd.SampleU(batch, torch.MustGenerator(torch.CPU, 3))
	require.NoError(t, err)
	require.Len(t, got, batch)
	var want []float32
	g3 := torch.MustGenerator(torch.CPU, 3)
	for len(want) < batch {
		all, err := DefaultDensity().SampleU(2*batch, g3)
		require.NoError(t, err)
		for _, v := range all {
			if v >= float32(rd.MinVal) && v <= float32(rd.MaxVal) {
				want = append(want, v)
			}
		}
	}
	require.Equal(t, want[:batch], got)
	rd.MinVal, rd.MaxVal = 0.9, 0.1
	_, err = rd.SampleU(batch, g3)
	require.ErrorContains(t, err, "empty")

	// logit-normal: u = sigmoid(randn) for mean 0, std 1.
	g := torch.MustGenerator(torch.CPU, 11)
	u, err := DefaultDensity().SampleU(batch, g)
	require.NoError(t, err)
	z := torch.Randn([]int64{batch}, torch.MustGenerator(torch.CPU, 11), torch.Float32, torch.CPU)
	defer z.Close()
	sg := z.Sigmoid()
	defer sg.Close()
	require.Equal(t, sg.Float32s(), u)
}

// TestBadInput checks that misuse gives errors.
func TestBadInput(t *testing.T) {
	testutil.NoLeak(t)
	f := load(t)
	_, err := f.cfg.PipelineSchedule(0, 16)
	require.ErrorContains(t, err, "steps")
	_, err = f.cfg.PipelineSchedule(4, 0)
	require.ErrorContains(t, err, "sequence length")
	_, err = f.cfg.SetTimesteps([]float32{1, 0}, 0.5)
	require.ErrorContains(t, err, "sigma 1")
	_, err = ParseConfig([]byte(`{"use_karras_sigmas": true}`))
	require.ErrorContains(t, err, "karras")
	_, err = ParseConfig([]byte(`{"num_train_timesteps": "x"}`))
	require.Error(t, err)
	_, err = LoadConfig(filepath.Join(t.TempDir(), "missing.json"))
	require.Error(t, err)

	s := f.schedule(t, f.rep.StepCase)
	st := NewStepper(s)
	a := torch.Zeros([]int64{1, 4, 8}, torch.Float32, torch.CPU)
	defer a.Close()
	b := torch.Zeros([]int64{1, 4, 9}, torch.Float32, torch.CPU)
	defer b.Close()
	_, err = st.Step(a, s.Timesteps[0], b)
	require.ErrorContains(t, err, "differ in shape")
	_, err = NewStepper(s).Step(a, -1, a)
	require.ErrorContains(t, err, "not in the schedule")
	last := s.Steps() - 1
	st = &Stepper{Schedule: s, BeginIndex: &last}
	x, err := st.Step(a, 0, a)
	require.NoError(t, err)
	x.Close()
	_, err = st.Step(a, 0, a)
	require.ErrorContains(t, err, "step called")
	_, err = NewStepper(nil).Step(a, 0, a)
	require.ErrorContains(t, err, "without a schedule")
	_, err = Interpolate(a, a, []float32{0.5, 0.5})
	require.ErrorContains(t, err, "sigmas for a batch")

	// Static shift (no dynamic shifting) is diffusers' shift·σ/(1+(shift−1)·σ).
	c := f.cfg
	c.UseDynamicShifting = false
	st2, err := c.SetTimesteps([]float32{1, 0.5}, 123)
	require.NoError(t, err)
	sh := float32(c.Shift)
	require.Equal(t, float32(sh*0.5)/(1+float32((sh-1)*0.5)), st2.Sigmas[1])
	require.Equal(t, 0.0, st2.Mu)
}
