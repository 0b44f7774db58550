package flow

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/dp2osr/dp2o/flow/transformer"
	"github.com/dp2osr/dp2o/imageio"
	"github.com/dp2osr/dp2o/internal/testutil"
	"github.com/dp2osr/dp2o/torch"
)

// pipelineReport is flux/pipeline/report.json.
type pipelineReport struct {
	Prompts           []string `json:"prompts"`
	Seed              uint64   `json:"seed"`
	Steps             int      `json:"steps"`
	GuidanceScale     float64  `json:"guidance_scale"`
	ConditioningScale float64  `json:"controlnet_conditioning_scale"`
	Height, Width     int64
	Batch             int `json:"batch"`
	ImageSeqLen       int `json:"image_seq_len"`
}

// Tolerances of the flux/pipeline README for a float32 port.
const (
	pipelineTol      = 1e-4
	uint8MaxFraction = 0.001
)

// tolerance is pipelineTol on the CPU; on CUDA (TF32 off) the kernels sum
// in other orders, and the bound is ten times looser.
func tolerance(t testing.TB) float64 {
	if testutil.Device(t).IsCUDA() {
		return 10 * pipelineTol
	}
	return pipelineTol
}

func readReport(t testing.TB) pipelineReport {
	t.Helper()
	var r pipelineReport
	data, err := os.ReadFile(testutil.Fixture(t, "flux/pipeline/report.json"))
	require.NoError(t, err)
	require.NoError(t, json.Unmarshal(data, &r))
	require.Positive(t, r.Batch)
	return r
}

// fluxFolder lays the fixture's tiny components out as a FLUX.1 folder
// without text encoders (symlinks), and the ControlNet as the released flat
// file alone in its folder, as C-FLUX ships it.
func fluxFolder(t testing.TB) (base, controlnet string) {
	t.Helper()
	base = t.TempDir()
	for sub, rel := range map[string]string{"transformer": "transformer", "vae": "vae", "scheduler": "scheduler/scheduler"} {
		src, err := filepath.Abs(testutil.Fixture(t, "flux/"+rel))
		require.NoError(t, err)
		require.NoError(t, os.Symlink(src, filepath.Join(base, sub)))
	}
	cdir := t.TempDir()
	src, err := filepath.Abs(testutil.Fixture(t, "flux/controlnet/model.safetensors"))
	require.NoError(t, err)
	controlnet = filepath.Join(cdir, "model.safetensors")
	require.NoError(t, os.Symlink(src, controlnet))
	return base, controlnet
}

// loadTiny loads the fixture pipeline: the ControlNet is built from the
// transformer's config with the fixture ControlNet's layer counts.
func loadTiny(t testing.TB, dev torch.Device) *CFLUX {
	t.Helper()
	cc, err := transformer.LoadConfig(testutil.Fixture(t, "flux/controlnet/config.json"))
	require.NoError(t, err)
	base, cn := fluxFolder(t)
	o := LoadOptions{Device: dev, DType: torch.Float32, NumDoubleLayers: cc.NumLayers, NumSingleLayers: cc.NumSingleLayers, NoTextEncoders: true,
		NoAutocast: true} // float32 parity with the fixtures on CUDA too
	p, err := LoadCFLUX(base, cn, o)
	require.NoError(t, err)
	t.Cleanup(p.Close)
	return p
}

// controlImages loads control_<b>.png of the fixture as the script does.
func controlImages(t testing.TB, r pipelineReport) (*torch.Tensor, []*imageio.RGB8) {
	t.Helper()
	var parts []*torch.Tensor
	var imgs []*imageio.RGB8
	for b := 0; b < r.Batch; b++ {
		img, err := imageio.Load(testutil.Fixture(t, fmt.Sprintf("flux/pipeline/control_%d.png", b)))
		require.NoError(t, err)
		x, err := ControlTensor(img)
		require.NoError(t, err)
		parts = append(parts, x)
		imgs = append(imgs, img)
	}
	c := torch.Unscope(torch.Cat(parts, 0))
	for _, x := range parts {
		x.Close()
	}
	t.Cleanup(c.Close)
	return c, imgs
}

// recorder keeps a CPU copy of every tapped tensor, in emission order.
type recorder struct {
	names []string
	got   map[string]*torch.Tensor
}

func newRecorder(t testing.TB) *recorder {
	r := &recorder{got: map[string]*torch.Tensor{}}
	t.Cleanup(func() {
		for _, x := range r.got {
			x.Close()
		}
	})
	return r
}

func (r *recorder) tap(name string, x *torch.Tensor) {
	r.names = append(r.names, name)
	r.got[name] = torch.Unscope(x.ToDevice(torch.CPU).Contiguous())
}

// exact lists the fixture tensors that must match bit for bit: the random
// draws, the inputs and integer data.
func exact(name string) bool {
	return strings.HasPrefix(name, "rng_draw_") || name == "latent_image_ids" || name == "text_ids" ||
		name == "sigmas" || name == "timesteps" || name == "initial_latents_packed" ||
		strings.HasSuffix(name, ".timestep_input") || strings.HasSuffix(name, ".guidance_input") ||
		name == "prompt_embeds" || name == "pooled_prompt_embeds"
}

// TestPipelineMatchesReference runs FluxControlNetPipeline on the fixture's
// tiny components and compares every intermediate the reference recorded,
// in pipeline order (the first diverging tensor is named), then the 8-bit
// image.
func TestPipelineMatchesReference(t *testing.T) {
	testutil.NoLeak(t)
	r := readReport(t)
	dev := testutil.Device(t)
	p := loadTiny(t, dev)
	ref := testutil.Tensors(t, testutil.Fixture(t, "flux/pipeline/io.safetensors"))
	control, imgs := controlImages(t, r)
	testutil.AssertEqual(t, "control_image", control, ref["control_image"])
	var u8 []uint8
	for _, img := range imgs {
		u8 = append(u8, img.Pix...)
	}
	cu8 := torch.FromSlice(u8, ref["control_image_uint8"].Shape()...)
	defer cu8.Close()
	testutil.AssertEqual(t, "control_image_uint8", cu8, ref["control_image_uint8"])
	require.Equal(t, r.Height, control.Size(2))
	require.Equal(t, r.Width, control.Size(3))

	emb, err := NewPromptEmbeds(ref["prompt_embeds"], ref["pooled_prompt_embeds"])
	require.NoError(t, err)
	defer emb.Close()
	rec := newRecorder(t)
	o := DefaultSampleOptions()
	o.Steps, o.GuidanceScale, o.ConditioningScale = r.Steps, r.GuidanceScale, r.ConditioningScale
	o.Tap = rec.tap
	progress := 0
	o.Progress = func(step, total int) {
		require.Equal(t, r.Steps, total)
		progress = step
	}
	img, err := p.SampleEmbeds(context.Background(), control, emb, o, torch.MustGenerator(torch.CPU, r.Seed))
	require.NoError(t, err)
	defer img.Close()
	require.Equal(t, r.Steps, progress)

	compared := map[string]bool{"control_image": true, "control_image_uint8": true}
	// Inputs that a text-free run cannot produce (the tokenizer ids) are
	// checked by the t5 and clip packages.
	compared["clip_input_ids"], compared["t5_input_ids"] = true, true
	for _, name := range rec.names {
		want, ok := ref[name]
		if !ok {
			continue
		}
		got := rec.got[name]
		if exact(name) {
			testutil.AssertEqual(t, name, got, want)
		} else {
			testutil.AssertClose(t, name, got, want, tolerance(t), 0)
		}
		compared[name] = true
	}
	testutil.AssertClose(t, "image_float", img, ref["image_float"], tolerance(t), 0)

	// The PIL image: round half to even, (B, H, W, 3); at most 0.1 % of
	// the values one off (rounding boundary).
	got := torch.Scoped(func() *torch.Tensor {
		return img.MulScalar(255).Round().To(torch.Uint8).Permute([]int64{0, 2, 3, 1}).Contiguous()
	})
	defer got.Close()
	want := ref["image_uint8"]
	require.Equal(t, want.Shape(), got.Shape())
	gb, wb := got.Bytes(), want.Bytes()
	off := 0
	for i := range gb {
		d := int(gb[i]) - int(wb[i])
		require.LessOrEqual(t, d*d, 1, "image_uint8 value %d differs by %d", i, d)
		if d != 0 {
			off++
		}
	}
	require.LessOrEqual(t, float64(off), uint8MaxFraction*float64(len(gb)), "image_uint8: %d values off by one", off)
	compared["image_uint8"] = true
	compared["image_float"] = true

	for name := range ref {
		require.True(t, compared[name], "fixture tensor %s was not compared", name)
	}
}

// TestSameSeedSameImage checks that two runs with the same seed are
// bit-identical and that another seed changes the output.
func TestSameSeedSameImage(t *testing.T) {
	testutil.NoLeak(t)
	r := readReport(t)
	p := loadTiny(t, testutil.Device(t))
	ref := testutil.Tensors(t, testutil.Fixture(t, "flux/pipeline/io.safetensors"))
	control, _ := controlImages(t, r)
	emb, err := NewPromptEmbeds(ref["prompt_embeds"], ref["pooled_prompt_embeds"])
	require.NoError(t, err)
	defer emb.Close()
	o := DefaultSampleOptions()
	o.Steps = r.Steps
	run := func(seed uint64) *torch.Tensor {
		x, err := p.SampleEmbeds(context.Background(), control, emb, o, torch.MustGenerator(torch.CPU, seed))
		require.NoError(t, err)
		t.Cleanup(x.Close)
		return x
	}
	a, b, c := run(r.Seed), run(r.Seed), run(r.Seed+1)
	testutil.AssertEqual(t, "same seed", a, b)
	d := torch.Scoped(func() *torch.Tensor { return a.Sub(c).Abs().Max() })
	defer d.Close()
	require.Positive(t, d.Item(), "another seed gives another image")

	// A batch of two copies: one draw of each shape for the whole batch, so
	// the rows differ from each other and from the single-image run.
	two := torch.Unscope(torch.Cat([]*torch.Tensor{control, control}, 0))
	defer two.Close()
	p2 := torch.Unscope(torch.Cat([]*torch.Tensor{emb.Prompt, emb.Prompt}, 0))
	defer p2.Close()
	q2 := torch.Unscope(torch.Cat([]*torch.Tensor{emb.Pooled, emb.Pooled}, 0))
	defer q2.Close()
	emb2, err := NewPromptEmbeds(p2, q2)
	require.NoError(t, err)
	defer emb2.Close()
	x, err := p.SampleEmbeds(context.Background(), two, emb2, o, torch.MustGenerator(torch.CPU, r.Seed))
	require.NoError(t, err)
	defer x.Close()
	require.Equal(t, two.Shape(), x.Shape())
	rows := x.Split(1, 0)
	defer rows[0].Close()
	defer rows[1].Close()
	e := torch.Scoped(func() *torch.Tensor { return rows[0].Sub(rows[1]).Abs().Max() })
	defer e.Close()
	require.Positive(t, e.Item(), "batch rows get their own noise")
}

// TestGivenLatents runs the fixture with its initial latents given (the
// noise-pool mode of DP²O-SR's candidate generation): the posterior is
// still drawn from the seed, the second draw is skipped, and the image is
// the reference's.
func TestGivenLatents(t *testing.T) {
	testutil.NoLeak(t)
	r := readReport(t)
	p := loadTiny(t, testutil.Device(t))
	ref := testutil.Tensors(t, testutil.Fixture(t, "flux/pipeline/io.safetensors"))
	control, _ := controlImages(t, r)
	emb, err := NewPromptEmbeds(ref["prompt_embeds"], ref["pooled_prompt_embeds"])
	require.NoError(t, err)
	defer emb.Close()
	o := DefaultSampleOptions()
	o.Steps, o.GuidanceScale, o.ConditioningScale = r.Steps, r.GuidanceScale, r.ConditioningScale
	o.Latents = ref["initial_latents_packed"]
	var tapped []string
	o.Tap = func(name string, _ *torch.Tensor) { tapped = append(tapped, name) }
	img, err := p.SampleEmbeds(context.Background(), control, emb, o, torch.MustGenerator(torch.CPU, r.Seed))
	require.NoError(t, err)
	defer img.Close()
	testutil.AssertClose(t, "image_float", img, ref["image_float"], tolerance(t), 0)
	require.Contains(t, tapped, "rng_draw_0_posterior_noise")
	require.NotContains(t, tapped, "rng_draw_1_initial_noise")
	require.False(t, o.Latents.Closed(), "the caller's latents stay usable")

	o.Latents = ref["control_latents_packed"].Narrow(1, 1, ref["control_latents_packed"].Size(1)-1)
	defer o.Latents.Close()
	_, err = p.SampleEmbeds(context.Background(), control, emb, o, torch.MustGenerator(torch.CPU, r.Seed))
	require.ErrorContains(t, err, "given latents must be packed")
}

// TestBadInput checks that odd sizes, wrong shapes, missing files and a
// cancelled context give clear errors.
func TestBadInput(t *testing.T) {
	testutil.NoLeak(t)
	r := readReport(t)
	p := loadTiny(t, testutil.Device(t))
	ref := testutil.Tensors(t, testutil.Fixture(t, "flux/pipeline/io.safetensors"))
	emb, err := NewPromptEmbeds(ref["prompt_embeds"], ref["pooled_prompt_embeds"])
	require.NoError(t, err)
	defer emb.Close()
	o := DefaultSampleOptions()
	o.Steps = r.Steps
	gen := torch.MustGenerator(torch.CPU, r.Seed)
	f := int64(p.VAE.Config.DownsampleFactor())
	ctx := context.Background()

	// A side that is a multiple of 8 but not of 16.
	odd := torch.Zeros([]int64{int64(r.Batch), 3, 2*f*3 + f, 2 * f * 2}, torch.Float32, torch.CPU)
	defer odd.Close()
	_, err = p.SampleEmbeds(ctx, odd, emb, o, gen)
	require.ErrorContains(t, err, "multiples of 16")
	gray := torch.Zeros([]int64{int64(r.Batch), 1, 2 * f, 2 * f}, torch.Float32, torch.CPU)
	defer gray.Close()
	_, err = p.SampleEmbeds(ctx, gray, emb, o, gen)
	require.ErrorContains(t, err, "control image must be")
	two := torch.Zeros([]int64{int64(r.Batch) + 1, 3, 2 * f, 2 * f}, torch.Float32, torch.CPU)
	defer two.Close()
	_, err = p.SampleEmbeds(ctx, two, emb, o, gen)
	require.ErrorContains(t, err, "prompt embeddings for")
	ok := torch.Zeros([]int64{int64(r.Batch), 3, 2 * f, 2 * f}, torch.Float32, torch.CPU)
	defer ok.Close()
	bad := o
	bad.Steps = 0
	_, err = p.SampleEmbeds(ctx, ok, emb, bad, gen)
	require.ErrorContains(t, err, "steps")
	_, err = p.Sample(ctx, ok, []string{"x"}, o, gen)
	require.ErrorContains(t, err, "no text encoders")
	_, err = (&CFLUX{}).SampleEmbeds(ctx, ok, emb, o, gen)
	require.ErrorContains(t, err, "not loaded")
	var none *CFLUX
	_, err = none.Sample(ctx, ok, []string{"x"}, o, gen)
	require.ErrorContains(t, err, "no text encoders")
	_, err = none.Upscale(ctx, imageio.NewRGB8(int(2*f), int(2*f)), DefaultUpscaleOptions(), gen)
	require.ErrorContains(t, err, "not loaded")
	_, err = NewPromptEmbeds(ref["pooled_prompt_embeds"], ref["pooled_prompt_embeds"])
	require.ErrorContains(t, err, "(B, T, D)")

	// Cancelled before the start and between steps.
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	_, err = p.SampleEmbeds(cctx, ok, emb, o, gen)
	require.True(t, errors.Is(err, context.Canceled), "%v", err)
	cctx, cancel = context.WithCancel(ctx)
	defer cancel()
	stop := o
	stop.Progress = func(step, total int) { cancel() }
	_, err = p.SampleEmbeds(cctx, ok, emb, stop, gen)
	require.True(t, errors.Is(err, context.Canceled), "%v", err)
	require.ErrorContains(t, err, "cancelled at step 1")

	// Upscale: a processing size that is a multiple of 8 but not of 16
	// is an error, or padded with PadTo16.
	img := imageio.NewRGB8(int(2*f*3+f), int(2*f*2))
	uo := DefaultUpscaleOptions()
	uo.Steps = r.Steps
	uo.ProcessSize = int(2 * f * 2)
	_, err = p.Upscale(ctx, img, uo, gen)
	require.ErrorContains(t, err, "multiples of 16")
	uo.PadTo16 = true
	_, err = p.Upscale(ctx, img, uo, gen)
	require.ErrorContains(t, err, "no text encoders", "padding passes the size check")

	// Loading: missing folders and files, a ControlNet of another layout.
	base, cn := fluxFolder(t)
	_, err = LoadCFLUX(t.TempDir(), cn, DefaultLoadOptions())
	require.ErrorContains(t, err, "not a FLUX.1 folder")
	lo := LoadOptions{DType: torch.Float32, NumDoubleLayers: p.ControlNet.Config.NumLayers, NoTextEncoders: true}
	_, err = LoadCFLUX(base, filepath.Join(t.TempDir(), "model.safetensors"), lo)
	require.ErrorContains(t, err, "controlnet checkpoint")
	lo.NumDoubleLayers++
	_, err = LoadCFLUX(base, cn, lo)
	require.ErrorContains(t, err, "controlnet")
	lo.NumDoubleLayers, lo.NumSingleLayers = p.ControlNet.Config.NumLayers, 1
	_, err = LoadCFLUX(base, cn, lo)
	require.ErrorContains(t, err, "controlnet")
	lo.NoTextEncoders = false
	lo.NumSingleLayers = 0
	_, err = LoadCFLUX(base, cn, lo)
	require.ErrorContains(t, err, "missing tokenizer")
}
