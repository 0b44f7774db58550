package scheduler

import (
	"encoding/json"
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/dp2osr/dp2o/internal/testutil"
	"github.com/dp2osr/dp2o/torch"
)

// exactRuntime reports whether the tests run where the fixture was made:
// libtorch 1.13 on the CPU. There the schedule and every step reproduce the
// reference bit for bit. With libtorch 2.x, CPU linspace rounds some betas
// differently (by an ulp, which the README allows), and on CUDA a division
// by a 0-d CPU tensor is a multiplication by its reciprocal, so values
// differ in their last bits and the checks use looser bounds.
func exactRuntime(t *testing.T) bool {
	return strings.HasPrefix(torch.Version(), "1.13") && testutil.Device(t) == torch.CPU
}

// stepTol is the step outputs' tolerance: |go − ref| ≤ tol·(1 + |ref|),
// 1e-6 on the fixture's runtime as the README recommends, 1e-5 elsewhere.
func stepTol(t *testing.T) float64 {
	if exactRuntime(t) {
		return 1e-6
	}
	return 1e-5
}

// assertUlps checks float32 scalars: equal on the fixture's runtime, within
// a few ulps elsewhere.
func assertUlps(t *testing.T, want, got float64, msg string, args ...any) {
	t.Helper()
	if exactRuntime(t) {
		require.Equal(t, float32(want), float32(got), append([]any{msg}, args...)...)
		return
	}
	require.InEpsilon(t, want, got, 5e-7, append([]any{msg}, args...)...)
}

type fixture struct {
	ref  map[string]*torch.Tensor
	meta meta
	cfg  Config
}

type stepMeta struct {
	Chain          string  `json:"chain"`
	Index          int     `json:"index"`
	Timestep       int64   `json:"timestep"`
	PrevT          int64   `json:"prev_t"`
	PrevTimestep   int64   `json:"prev_timestep"`
	AlphaProdT     float64 `json:"alpha_prod_t"`
	AlphaProdTPrev float64 `json:"alpha_prod_t_prev"`
	Variance       float64 `json:"variance"`
}

type meta struct {
	DDPMConfig json.RawMessage    `json:"ddpm_effective_config"`
	DDIMConfig json.RawMessage    `json:"ddim_effective_config"`
	Timesteps  map[string][]int64 `json:"timesteps"`
	DDPMSteps  []stepMeta         `json:"ddpm_steps"`
	DDIMSteps  []stepMeta         `json:"ddim_steps"`
}

func load(t *testing.T) *fixture {
	t.Helper()
	f := &fixture{ref: testutil.Tensors(t, testutil.Fixture(t, "sd2/scheduler/io.safetensors"))}
	data, err := os.ReadFile(testutil.Fixture(t, "sd2/scheduler/meta.json"))
	require.NoError(t, err)
	require.NoError(t, json.Unmarshal(data, &f.meta))
	f.cfg, err = LoadConfig(testutil.Fixture(t, "sd2/scheduler/scheduler_config.json"))
	require.NoError(t, err)
	return f
}

func (f *fixture) int(t *testing.T, key string) int64 {
	t.Helper()
	x, ok := f.ref[key]
	require.True(t, ok, key)
	return x.ItemInt()
}

func (f *fixture) get(t *testing.T, key string) *torch.Tensor {
	t.Helper()
	x, ok := f.ref[key]
	require.True(t, ok, key)
	return x
}

func newDDPM(t *testing.T, cfg Config, steps int) *DDPM {
	t.Helper()
	d, err := NewDDPM(cfg)
	require.NoError(t, err)
	t.Cleanup(d.Close)
	if steps > 0 {
		require.NoError(t, d.SetTimesteps(steps))
	}
	return d
}

func newDDIM(t *testing.T, cfg Config, steps int) *DDIM {
	t.Helper()
	d, err := NewDDIM(cfg)
	require.NoError(t, err)
	t.Cleanup(d.Close)
	if steps > 0 {
		require.NoError(t, d.SetTimesteps(steps))
	}
	return d
}

func TestEffectiveConfigs(t *testing.T) {
	f := load(t)
	for _, raw := range []json.RawMessage{f.meta.DDPMConfig, f.meta.DDIMConfig} {
		var want Config
		require.NoError(t, json.Unmarshal(raw, &want))
		// The DDIM dump has no variance_type; DDPM ignores set_alpha_to_one.
		got := f.cfg
		if !strings.Contains(string(raw), "variance_type") {
			want.VarianceType = got.VarianceType
		}
		require.Equal(t, want, got)
	}
	require.False(t, f.cfg.ClipSample)
	require.Equal(t, 1, f.cfg.StepsOffset)
	require.Equal(t, "leading", f.cfg.TimestepSpacing)
}

func TestScheduleTensors(t *testing.T) {
	testutil.NoLeak(t)
	f := load(t)
	d := newDDPM(t, f.cfg, 0)
	if exactRuntime(t) {
		testutil.AssertEqual(t, "betas", d.Betas(), f.get(t, "betas"))
		testutil.AssertEqual(t, "alphas_cumprod", d.AlphasCumprod(), f.get(t, "alphas_cumprod"))
	} else {
		// libtorch 2.x's float32 linspace is off by up to 2 ulp (README),
		// which squaring doubles: a few ulp of relative error.
		testutil.AssertClose(t, "betas", d.Betas(), f.get(t, "betas"), 0, 5e-7)
		testutil.AssertClose(t, "alphas_cumprod", d.AlphasCumprod(), f.get(t, "alphas_cumprod"), 0, 5e-7)
	}
	ddim := newDDIM(t, f.cfg, 0)
	assertUlps(t, f.get(t, "ddim_final_alpha_cumprod").Item(), ddim.FinalAlphaCumprod(), "final_alpha_cumprod")
	// Before SetTimesteps: every training timestep, descending.
	ts := d.Timesteps()
	n := f.cfg.NumTrainTimesteps
	require.Len(t, ts, n)
	for i, v := range ts {
		require.Equal(t, int64(n-1-i), v)
	}
}

func TestTimesteps(t *testing.T) {
	testutil.NoLeak(t)
	f := load(t)
	counts := f.get(t, "num_inference_steps").Int64s()
	require.NotEmpty(t, counts)
	for k, n := range counts {
		want := f.get(t, "timesteps."+strconv.Itoa(k)).Int64s()
		require.Equal(t, want, newDDPM(t, f.cfg, int(n)).Timesteps(), "ddpm %d steps", n)
		require.Equal(t, want, newDDIM(t, f.cfg, int(n)).Timesteps(), "ddim %d steps", n)
		require.Equal(t, want, f.meta.Timesteps[strconv.FormatInt(n, 10)], "meta.json %d steps", n)
	}
	for n, want := range f.meta.Timesteps {
		steps, err := strconv.Atoi(n)
		require.NoError(t, err)
		require.Equal(t, want, newDDPM(t, f.cfg, steps).Timesteps(), "meta.json %d steps", steps)
	}
}

// tensorsOn moves a fixture tensor to the test device.
func tensorsOn(t *testing.T, x *torch.Tensor) *torch.Tensor {
	return x.ToDevice(testutil.Device(t))
}

func assertClose(t *testing.T, name string, got, want *torch.Tensor) {
	t.Helper()
	g := got.ToDevice(torch.CPU)
	defer g.Close()
	testutil.AssertClose(t, name, g, want, stepTol(t), stepTol(t))
}

func assertEqual(t *testing.T, name string, got, want *torch.Tensor) {
	t.Helper()
	g := got.ToDevice(torch.CPU)
	defer g.Close()
	testutil.AssertEqual(t, name, g, want)
}

// TestDDPMChain runs the fixture's 7-step DDPM chain from its initial
// sample on the chain's own outputs: once with the noise drawn separately
// (checked bit-exact) and given to StepWithNoise, once through Step with a
// fresh generator.
func TestDDPMChain(t *testing.T) {
	testutil.NoLeak(t)
	s := torch.NewScope()
	defer s.Close()
	f := load(t)
	n := f.int(t, "ddpm_chain.num_inference_steps")
	d := newDDPM(t, f.cfg, int(n))
	ts := f.get(t, "ddpm_chain.timesteps").Int64s()
	require.Equal(t, ts, d.Timesteps())
	seed := uint64(f.int(t, "ddpm_chain.generator_seed"))

	for _, viaStep := range []bool{false, true} {
		gen := torch.MustGenerator(torch.CPU, seed)
		x := tensorsOn(t, f.get(t, "ddpm_chain.initial_sample"))
		for i, ti := range d.Timesteps() {
			p := fmt.Sprintf("ddpm_chain.%d.", i)
			assertClose(t, p+"sample", x, f.get(t, p+"sample"))
			eps := tensorsOn(t, f.get(t, p+"model_output"))
			var prev, x0 *torch.Tensor
			if viaStep {
				prev, x0 = d.Step(eps, ti, x, gen)
			} else {
				noise := DrawNoise(eps, gen)
				assertEqual(t, p+"variance_noise", noise, f.get(t, p+"variance_noise"))
				prev, x0 = d.StepWithNoise(eps, ti, x, noise)
			}
			assertClose(t, p+"pred_original_sample", x0, f.get(t, p+"pred_original_sample"))
			assertClose(t, p+"prev_sample", prev, f.get(t, p+"prev_sample"))
			x = prev
		}
	}
}

// TestDDPMSingleSteps takes the fixture's independent steps of the 50-step
// schedule, drawing from one generator in order.
func TestDDPMSingleSteps(t *testing.T) {
	testutil.NoLeak(t)
	s := torch.NewScope()
	defer s.Close()
	f := load(t)
	d := newDDPM(t, f.cfg, int(f.int(t, "ddpm_single.num_inference_steps")))
	gen := torch.MustGenerator(torch.CPU, uint64(f.int(t, "ddpm_single.generator_seed")))
	check := torch.MustGenerator(torch.CPU, uint64(f.int(t, "ddpm_single.generator_seed")))
	for k := 0; ; k++ {
		p := fmt.Sprintf("ddpm_single.%d.", k)
		if _, ok := f.ref[p+"timestep"]; !ok {
			require.Greater(t, k, 0)
			break
		}
		ti := f.int(t, p+"timestep")
		require.Equal(t, ti, d.Timesteps()[f.int(t, p+"index")], p+"index")
		eps := tensorsOn(t, f.get(t, p+"model_output"))
		x := tensorsOn(t, f.get(t, p+"sample"))
		noise := DrawNoise(eps, check)
		assertEqual(t, p+"variance_noise", noise, f.get(t, p+"variance_noise"))
		prev, x0 := d.Step(eps, ti, x, gen)
		assertClose(t, p+"pred_original_sample", x0, f.get(t, p+"pred_original_sample"))
		assertClose(t, p+"prev_sample", prev, f.get(t, p+"prev_sample"))
	}
}

func TestDDIMChain(t *testing.T) {
	testutil.NoLeak(t)
	s := torch.NewScope()
	defer s.Close()
	f := load(t)
	d := newDDIM(t, f.cfg, int(f.int(t, "ddim_chain.num_inference_steps")))
	require.Equal(t, f.get(t, "ddim_chain.timesteps").Int64s(), d.Timesteps())
	x := tensorsOn(t, f.get(t, "ddim_chain.initial_sample"))
	for i, ti := range d.Timesteps() {
		p := fmt.Sprintf("ddim_chain.%d.", i)
		assertClose(t, p+"sample", x, f.get(t, p+"sample"))
		prev, x0 := d.Step(tensorsOn(t, f.get(t, p+"model_output")), ti, x, nil)
		assertClose(t, p+"pred_original_sample", x0, f.get(t, p+"pred_original_sample"))
		assertClose(t, p+"prev_sample", prev, f.get(t, p+"prev_sample"))
		x = prev
	}
}

func TestAddNoiseAndVelocity(t *testing.T) {
	testutil.NoLeak(t)
	s := torch.NewScope()
	defer s.Close()
	f := load(t)
	for _, sch := range []Scheduler{newDDPM(t, f.cfg, 0), newDDIM(t, f.cfg, 0)} {
		x0 := tensorsOn(t, f.get(t, "add_noise.original_samples"))
		noise := tensorsOn(t, f.get(t, "add_noise.noise"))
		ts := tensorsOn(t, f.get(t, "add_noise.timesteps"))
		assertClose(t, "add_noise.noisy_samples", sch.AddNoise(x0, noise, ts), f.get(t, "add_noise.noisy_samples"))
		assertClose(t, "get_velocity.velocity", sch.Velocity(x0, noise, ts), f.get(t, "get_velocity.velocity"))
	}
}

// TestStepScalars checks prev_t, ᾱ_t, ᾱ_prev and the clamped variance of
// every step listed in meta.json.
func TestStepScalars(t *testing.T) {
	testutil.NoLeak(t)
	f := load(t)
	ac := f.get(t, "alphas_cumprod").Float32s()
	ours := newDDPM(t, f.cfg, 0).AlphasCumprod().Float32s()
	steps := map[string]int{"ddpm_chain": int(f.int(t, "ddpm_chain.num_inference_steps"))}
	single := int(f.int(t, "ddpm_single.num_inference_steps"))
	for _, m := range f.meta.DDPMSteps {
		n, ok := steps[m.Chain]
		if !ok {
			require.True(t, strings.HasPrefix(m.Chain, "ddpm_single."), m.Chain)
			n = single
		}
		d := newDDPM(t, f.cfg, n)
		require.Equal(t, m.Timestep, d.Timesteps()[m.Index], "%s step %d", m.Chain, m.Index)
		prev := d.PreviousTimestep(m.Timestep)
		require.Equal(t, m.PrevT, prev, "%s step %d prev_t", m.Chain, m.Index)
		require.Equal(t, float32(m.AlphaProdT), ac[m.Timestep])
		assertUlps(t, m.AlphaProdT, float64(ours[m.Timestep]), "%s step %d ᾱ_t", m.Chain, m.Index)
		aPrev := float32(1)
		if prev >= 0 {
			aPrev = ac[prev]
			assertUlps(t, m.AlphaProdTPrev, float64(ours[prev]), "%s step %d ᾱ_prev", m.Chain, m.Index)
		}
		require.Equal(t, float32(m.AlphaProdTPrev), aPrev)
		v, err := d.Variance(m.Timestep)
		require.NoError(t, err)
		assertUlps(t, m.Variance, v, "%s step %d variance", m.Chain, m.Index)
	}
	d := newDDIM(t, f.cfg, int(f.int(t, "ddim_chain.num_inference_steps")))
	for _, m := range f.meta.DDIMSteps {
		prev := d.PreviousTimestep(m.Timestep)
		require.Equal(t, m.PrevTimestep, prev)
		if prev >= 0 {
			require.Equal(t, float32(m.AlphaProdTPrev), ac[prev])
			assertUlps(t, m.AlphaProdTPrev, float64(ours[prev]), "ddim step %d ᾱ_prev", m.Index)
		} else {
			assertUlps(t, m.AlphaProdTPrev, d.FinalAlphaCumprod(), "ddim step %d final ᾱ", m.Index)
		}
	}
}
