package diffusion

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/dp2osr/dp2o/diffusion/clip"
	"github.com/dp2osr/dp2o/diffusion/scheduler"
	"github.com/dp2osr/dp2o/diffusion/unet"
	"github.com/dp2osr/dp2o/diffusion/vae"
	"github.com/dp2osr/dp2o/internal/testutil"
	"github.com/dp2osr/dp2o/torch"
	"github.com/dp2osr/dp2o/torch/nn"
)

// pipelineParams is params.json of the pipeline fixture.
type pipelineParams struct {
	Prompt            []string `json:"prompt"`
	NegativePrompt    []string `json:"negative_prompt"`
	Steps             int      `json:"num_inference_steps"`
	GuidanceScale     float64  `json:"guidance_scale"`
	ConditioningScale float64  `json:"controlnet_conditioning_scale"`
	Seed              uint64   `json:"seed"`
	Timesteps         []int64  `json:"timesteps"`
	RNGDraws          []string `json:"rng_draws_in_order"`
	Components        struct {
		Tokenizer         string `json:"tokenizer"`
		TextEncoder       string `json:"text_encoder_weights"`
		TextEncoderConfig string `json:"text_encoder_config"`
		UNet              string `json:"unet"`
		ControlNetConfig  string `json:"controlnet_config"`
		ControlNet        string `json:"controlnet_weights"`
		VAE               string `json:"vae"`
		Scheduler         string `json:"scheduler"`
	} `json:"components"`
}

// loadFixturePipeline builds the SD2 pipeline from the components the
// fixture's params.json names (paths relative to the pipeline folder).
func loadFixturePipeline(t *testing.T, dev torch.Device) (*SD2, pipelineParams, string) {
	t.Helper()
	dir := testutil.Fixture(t, "sd2/pipeline")
	var pp pipelineParams
	raw, err := os.ReadFile(filepath.Join(dir, "params.json"))
	require.NoError(t, err)
	require.NoError(t, json.Unmarshal(raw, &pp))
	rel := func(p string) string { return filepath.Join(dir, p) }
	c := pp.Components

	p := &SD2{DType: torch.Float32, Device: dev}
	t.Cleanup(p.Close)
	p.Tokenizer, err = clip.LoadTokenizer(rel(c.Tokenizer))
	require.NoError(t, err)
	tcfg, err := clip.LoadTextConfig(rel(c.TextEncoderConfig))
	require.NoError(t, err)
	// The text encoder may be stored row-sparse (testutil.Weights).
	src, err := nn.OpenSafetensors(testutil.Weights(t, filepath.Join("sd2", "pipeline", c.TextEncoder)))
	require.NoError(t, err)
	defer src.Close()
	p.TextEncoder, err = clip.TextModelFromSource(src, tcfg, torch.Float32, dev)
	require.NoError(t, err)
	p.UNet, err = unet.Load(rel(c.UNet), torch.Float32, dev)
	require.NoError(t, err)
	cncfg, err := unet.LoadControlNetConfig(rel(c.ControlNetConfig))
	require.NoError(t, err)
	p.ControlNet, err = unet.LoadControlNetFile(cncfg, rel(c.ControlNet), torch.Float32, dev)
	require.NoError(t, err)
	p.VAE, err = vae.Load(rel(c.VAE), torch.Float32, dev)
	require.NoError(t, err)
	p.Scheduler, err = scheduler.LoadConfig(filepath.Join(rel(c.Scheduler), "scheduler_config.json"))
	require.NoError(t, err)
	return p, pp, dir
}

// TestPipelineFixture runs the whole C-SD2 sampling loop on the tiny
// components and compares every recorded intermediate: random draws bit for
// bit, embeddings at 1e-5, per-step tensors at 1e-4 + 1e-5·|ref|, the image
// at 1e-4 and its 8-bit rounding to ±1 on at most 0.1% of the values.
func TestPipelineFixture(t *testing.T) {
	testutil.NoLeak(t)
	dev := testutil.Device(t)
	p, pp, dir := loadFixturePipeline(t, dev)
	ref := testutil.Tensors(t, filepath.Join(dir, "io.safetensors"))

	scope := torch.NewScope()
	defer scope.Close()
	// The control images go in as the pipeline receives them: u8/255, NCHW.
	control := controlImages(ref)

	gen, err := torch.NewGenerator(torch.CPU, pp.Seed)
	require.NoError(t, err)
	opts := SampleOptions{Steps: pp.Steps, GuidanceScale: pp.GuidanceScale, ConditioningScale: pp.ConditioningScale}
	seen := map[string]bool{}
	var order []string
	opts.Tap = func(name string, got *torch.Tensor) {
		want, ok := ref[name]
		if !ok {
			return
		}
		seen[name] = true
		order = append(order, name)
		switch {
		case name == "initial_latents" || filepath.Ext(name) == ".variance_noise":
			testutil.AssertEqual(t, name, got, want)
		case name == "prompt_embeds" || name == "negative_prompt_embeds":
			testutil.AssertClose(t, name, got, want, 1e-5, 1e-5)
		default:
			testutil.AssertClose(t, name, got, want, 1e-4, 1e-5)
		}
	}
	img, err := p.Sample(context.Background(), control, pp.Prompt, pp.NegativePrompt, opts, gen)
	require.NoError(t, err)
	defer img.Close()
	for _, n := range []string{"prompt_embeds", "negative_prompt_embeds", "initial_latents", "decode_input"} {
		require.True(t, seen[n], "tap %s never fired", n)
	}
	for i := range pp.Timesteps {
		for _, k := range []string{"latents", "noise_pred_guided", "noise_pred_text", "noise_pred_uncond", "controlnet_mid_block_res_sample"} {
			require.True(t, seen[stepName(i, k)], "tap %s never fired", stepName(i, k))
		}
	}

	// The variance noise of every step is the next draw of the same
	// generator: replay the draws in the fixture's order on a fresh one.
	replay, err := torch.NewGenerator(torch.CPU, pp.Seed)
	require.NoError(t, err)
	for _, name := range pp.RNGDraws {
		want := ref[name]
		got := torch.Randn(want.Shape(), replay, torch.Float32, torch.CPU)
		testutil.AssertEqual(t, "draw "+name, got, want)
		got.Close()
	}

	hwc := img.Permute([]int64{0, 2, 3, 1}).Contiguous()
	testutil.AssertClose(t, "image_np", hwc, ref["image_np"], 1e-4, 0)
	gotU8 := ToUint8(hwc)
	off, maxd := countOff(gotU8.Bytes(), ref["image_u8"].Bytes())
	require.LessOrEqual(t, maxd, 1, "image_u8 differs by more than 1")
	require.LessOrEqual(t, float64(off), 0.001*float64(len(gotU8.Bytes())), "image_u8: %d values off by one", off)
	t.Logf("image_u8: %d of %d values off by one", off, len(gotU8.Bytes()))
}

// controlImages converts the fixture's (B, H, W, 3) uint8 control images to
// (B, 3, H, W) float32 in [0, 1].
func controlImages(ref map[string]*torch.Tensor) *torch.Tensor {
	return torch.Scoped(func() *torch.Tensor {
		return ref["control_images_u8"].Permute([]int64{0, 3, 1, 2}).To(torch.Float32).DivScalar(255)
	})
}

func stepName(i int, k string) string { return fmt.Sprintf("step.%d.%s", i, k) }

func countOff(a, b []byte) (off, maxd int) {
	for i := range a {
		d := int(a[i]) - int(b[i])
		if d < 0 {
			d = -d
		}
		if d > 0 {
			off++
		}
		if d > maxd {
			maxd = d
		}
	}
	return off, maxd
}

// TestPipelineCancel stops the loop through the context.
func TestPipelineCancel(t *testing.T) {
	testutil.NoLeak(t)
	p, pp, dir := loadFixturePipeline(t, testutil.Device(t))
	ref := testutil.Tensors(t, filepath.Join(dir, "io.safetensors"))
	control := controlImages(ref)
	defer control.Close()
	ctx, cancel := context.WithCancel(context.Background())
	opts := DefaultSampleOptions()
	opts.Steps = 4
	opts.Progress = func(step, total int) {
		if step == 2 {
			cancel()
		}
	}
	_, err := p.Sample(ctx, control, pp.Prompt, pp.NegativePrompt, opts, nil)
	require.Error(t, err)
	require.True(t, errors.Is(err, context.Canceled), "%v", err)
}

// TestPipelineBadInput checks the shape rules of Sample, on shapes derived
// from the fixture's own batch, image size and VAE scale factor.
func TestPipelineBadInput(t *testing.T) {
	testutil.NoLeak(t)
	p, pp, dir := loadFixturePipeline(t, testutil.Device(t))
	hwc := testutil.Tensors(t, filepath.Join(dir, "io.safetensors"))["control_images_u8"].Shape()
	B, H, W := int64(len(pp.Prompt)), hwc[1], hwc[2]
	f := int64(p.VAE.Config.DownsampleFactor())
	sample := func(t *testing.T, shape []int64) error {
		c := torch.Zeros(shape, torch.Float32, torch.CPU)
		defer c.Close()
		img, err := p.Sample(context.Background(), c, pp.Prompt, pp.NegativePrompt, DefaultSampleOptions(), nil)
		if img != nil {
			img.Close()
		}
		return err
	}
	cases := map[string][]int64{
		"side not a multiple of the VAE factor": {B, 3, H + f/2, W},
		"too small":                             {B, 3, f / 2, W},
		"one channel":                           {B, 1, H, W},
		"3-d":                                   {3, H, W},
		"prompt count must match the batch":     {B + 1, 3, H, W},
	}
	for name, shape := range cases {
		t.Run(name, func(t *testing.T) {
			require.Error(t, sample(t, shape))
		})
	}
}
