package flow

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/dp2osr/dp2o/flow/transformer"
	"github.com/dp2osr/dp2o/internal/testutil"
	"github.com/dp2osr/dp2o/torch"
)

// Tolerances of the t5_encoder (last_hidden_state) and clip_l
// (pooler_output) READMEs.
const (
	t5Tol   = 1e-4
	clipTol = 2e-5
)

func link(t testing.TB, src, dst string) {
	t.Helper()
	abs, err := filepath.Abs(src)
	require.NoError(t, err)
	require.NoError(t, os.Symlink(abs, dst))
}

// fullFluxFolder is fluxFolder with the text side too: FLUX's tokenizer/
// (its configs with the CLIP BPE files, which the clip_l README states equal
// the SD2 tokenizer fixture's), text_encoder/ (flux/clip_l), tokenizer_2/
// (flux/t5_tokenizer) and text_encoder_2/ (flux/t5_encoder).
func fullFluxFolder(t testing.TB) (base, controlnet string) {
	t.Helper()
	base, controlnet = fluxFolder(t)
	tok := filepath.Join(base, "tokenizer")
	require.NoError(t, os.Mkdir(tok, 0o755))
	link(t, testutil.Fixture(t, "sd2/clip_tokenizer/vocab.json"), filepath.Join(tok, "vocab.json"))
	link(t, testutil.Fixture(t, "sd2/clip_tokenizer/merges.txt"), filepath.Join(tok, "merges.txt"))
	for _, f := range []string{"tokenizer_config.json", "special_tokens_map.json"} {
		link(t, testutil.Fixture(t, "flux/clip_l/tokenizer/"+f), filepath.Join(tok, f))
	}
	for sub, rel := range map[string]string{"text_encoder": "flux/clip_l", "text_encoder_2": "flux/t5_encoder"} {
		d := filepath.Join(base, sub)
		require.NoError(t, os.Mkdir(d, 0o755))
		link(t, testutil.Fixture(t, rel+"/config.json"), filepath.Join(d, "config.json"))
		link(t, testutil.Weights(t, rel+"/model.safetensors"), filepath.Join(d, "model.safetensors"))
	}
	link(t, testutil.Fixture(t, "flux/t5_tokenizer"), filepath.Join(base, "tokenizer_2"))
	return base, controlnet
}

// TestTextToImage runs the pipeline from the prompt text: both tokenizers
// give the reference ids, EncodePrompt the reference embeddings, and
// Sample the reference image.
func TestTextToImage(t *testing.T) {
	testutil.NoLeak(t)
	r := readReport(t)
	dev := testutil.Device(t)
	ref := testutil.Tensors(t, testutil.Fixture(t, "flux/pipeline/io.safetensors"))
	base, cn := fullFluxFolder(t)
	cc, err := transformer.LoadConfig(testutil.Fixture(t, "flux/controlnet/config.json"))
	require.NoError(t, err)
	o := LoadOptions{Device: dev, DType: torch.Float32, NumDoubleLayers: cc.NumLayers, NumSingleLayers: cc.NumSingleLayers,
		NoAutocast: true} // float32 parity with the fixtures on CUDA too
	p, err := LoadCFLUX(base, cn, o)
	require.NoError(t, err)
	defer p.Close()

	rows, _ := p.Tokenizer.EncodeBatch(r.Prompts)
	var flat []int64
	for _, row := range rows {
		flat = append(flat, row...)
	}
	clipIDs := torch.FromSlice(flat, int64(len(rows)), int64(p.Tokenizer.MaxLength()))
	defer clipIDs.Close()
	testutil.AssertEqual(t, "clip_input_ids", clipIDs, ref["clip_input_ids"])
	t5IDs, err := p.Tokenizer2.EncodeTensor(r.Prompts, int(ref["t5_input_ids"].Size(1)))
	require.NoError(t, err)
	defer t5IDs.Close()
	testutil.AssertEqual(t, "t5_input_ids", t5IDs, ref["t5_input_ids"])

	p.MaxSequenceLength = int(ref["t5_input_ids"].Size(1))
	var emb *PromptEmbeds
	torch.NoGrad(func() { emb, err = p.EncodePrompt(r.Prompts) })
	require.NoError(t, err)
	defer emb.Close()
	testutil.AssertClose(t, "pooled_prompt_embeds", emb.Pooled, ref["pooled_prompt_embeds"], clipTol, 0)
	testutil.AssertClose(t, "prompt_embeds", emb.Prompt, ref["prompt_embeds"], t5Tol, 0)
	testutil.AssertEqual(t, "text_ids", emb.TextIDs, ref["text_ids"])

	control, _ := controlImages(t, r)
	so := DefaultSampleOptions()
	so.Steps, so.GuidanceScale, so.ConditioningScale = r.Steps, r.GuidanceScale, r.ConditioningScale
	img, err := p.Sample(context.Background(), control, r.Prompts, so, torch.MustGenerator(torch.CPU, r.Seed))
	require.NoError(t, err)
	defer img.Close()
	testutil.AssertClose(t, "image_float", img, ref["image_float"], tolerance(t), 0)
}

// TestHalfPrecisionRuns runs the whole pipeline from text with bfloat16
// text encoders, transformer and ControlNet on the CPU (without autocast),
// the dtype plumbing of the official --mixed_precision runs: latents and
// timesteps in the weights' dtype, guidance float32, the VAE float32, a
// float32 image in [0, 1], the same image for the same seed. (Values are
// not compared with the float32 reference: bfloat16 draws its noise
// differently.)
func TestHalfPrecisionRuns(t *testing.T) {
	testutil.NoLeak(t)
	r := readReport(t)
	cc, err := transformer.LoadConfig(testutil.Fixture(t, "flux/controlnet/config.json"))
	require.NoError(t, err)
	base, cn := fullFluxFolder(t)
	p, err := LoadCFLUX(base, cn, LoadOptions{Device: torch.CPU, DType: torch.BFloat16, NumDoubleLayers: cc.NumLayers, NumSingleLayers: cc.NumSingleLayers})
	require.NoError(t, err)
	defer p.Close()
	control, _ := controlImages(t, r)
	o := DefaultSampleOptions()
	o.Steps = r.Steps
	dtypes := map[string]torch.DType{}
	o.Tap = func(name string, x *torch.Tensor) { dtypes[name] = x.DType() }
	run := func() *torch.Tensor {
		img, err := p.Sample(context.Background(), control, r.Prompts, o, torch.MustGenerator(torch.CPU, r.Seed))
		require.NoError(t, err)
		t.Cleanup(img.Close)
		return img
	}
	a, b := run(), run()
	require.Equal(t, torch.Float32, a.DType())
	require.Equal(t, control.Shape(), a.Shape())
	testutil.AssertEqual(t, "same seed in bfloat16", a, b)
	lo, hi := torch.Scoped(func() *torch.Tensor { return a.Min() }), torch.Scoped(func() *torch.Tensor { return a.Max() })
	defer lo.Close()
	defer hi.Close()
	require.True(t, lo.Item() >= 0 && hi.Item() <= 1, "image in [0, 1]")
	require.Equal(t, torch.BFloat16, dtypes["prompt_embeds"])
	require.Equal(t, torch.BFloat16, dtypes["rng_draw_1_initial_noise"])
	require.Equal(t, torch.BFloat16, dtypes["step.0.timestep_input"])
	require.Equal(t, torch.Float32, dtypes["step.0.guidance_input"])
	require.Equal(t, torch.Float32, dtypes["rng_draw_0_posterior_noise"], "the VAE (and its posterior) stays float32")
	require.Equal(t, torch.BFloat16, dtypes["step.0.latents_out"])

	// Float32 embeddings made elsewhere are given the models' dtype.
	ref := testutil.Tensors(t, testutil.Fixture(t, "flux/pipeline/io.safetensors"))
	emb, err := NewPromptEmbeds(ref["prompt_embeds"], ref["pooled_prompt_embeds"])
	require.NoError(t, err)
	defer emb.Close()
	c, err := p.SampleEmbeds(context.Background(), control, emb, o, torch.MustGenerator(torch.CPU, r.Seed))
	require.NoError(t, err)
	defer c.Close()
	require.Equal(t, torch.BFloat16, dtypes["prompt_embeds"])
}
