package clipiqa

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/dp2osr/dp2o/internal/testutil"
	"github.com/dp2osr/dp2o/reward"
	"github.com/dp2osr/dp2o/reward/internal/iqatest"
	"github.com/dp2osr/dp2o/torch"
	"github.com/dp2osr/dp2o/torch/detinit"
	"github.com/dp2osr/dp2o/torch/nn"
	"github.com/dp2osr/dp2o/vision/clip"
)

const folder = "iqa/clipiqa+"

// clipConfig is cases.json's clip_config (CLIP's build_model arguments).
type clipConfig struct {
	EmbedDim          int64  `json:"embed_dim"`
	ImageResolution   int64  `json:"image_resolution"`
	VisionLayers      [4]int `json:"vision_layers"`
	VisionWidth       int64  `json:"vision_width"`
	ContextLength     int64  `json:"context_length"`
	VocabSize         int64  `json:"vocab_size"`
	TransformerWidth  int64  `json:"transformer_width"`
	TransformerHeads  int64  `json:"transformer_heads"`
	TransformerLayers int    `json:"transformer_layers"`
}

type promptCtx struct {
	Manifest string `json:"manifest"`
	Seed     uint64 `json:"seed"`
	Init     string `json:"init"`
}

// weights is the fixture's full weight set: the CLIP state dict
// (manifest + seed + fixed) and the learned context (its own manifest and
// seed). The test's cleanup frees it.
func weights(t testing.TB, f *iqatest.Folder) nn.MapSource {
	t.Helper()
	src := f.Weights(t)
	var model struct {
		PromptCtx promptCtx `json:"prompt_ctx"`
	}
	f.Field(t, "model", &model)
	require.Equal(t, detinit.Rule, model.PromptCtx.Init)
	man, err := detinit.LoadManifest(f.Path(model.PromptCtx.Manifest))
	require.NoError(t, err)
	ctx, err := detinit.Build(man.Specs, model.PromptCtx.Seed, torch.CPU)
	require.NoError(t, err)
	for k, v := range ctx {
		require.NotContains(t, src, k)
		src[k] = v
	}
	return src
}

var (
	once      sync.Once
	shared    *Scorer
	sharedErr error
	// promptTaps are the prompt-branch intermediates seen while the shared
	// scorer was built (cloned).
	promptTaps = map[string]*torch.Tensor{}
	tapOrder   []string
)

func scorer(t *testing.T, f *iqatest.Folder) *Scorer {
	t.Helper()
	once.Do(func() {
		shared, sharedErr = OpenTap(reward.OpenOptions{Source: weights(t, f), Device: testutil.Device(t)}, func(name string, x *torch.Tensor) {
			promptTaps[name] = torch.Unscope(x.Clone())
			tapOrder = append(tapOrder, name)
		})
	})
	require.NoError(t, sharedErr)
	return shared
}

func TestConfigMatchesFixture(t *testing.T) {
	f := iqatest.Load(t, folder)
	var cc clipConfig
	f.Field(t, "clip_config", &cc)
	require.Equal(t, cc.VisionLayers, clip.RN50.Layers)
	require.Equal(t, cc.VisionWidth, clip.RN50.Width)
	require.Equal(t, cc.EmbedDim, clip.RN50.OutputDim)
	require.Equal(t, cc.VisionWidth*32/64, clip.RN50.Heads)
	require.Equal(t, cc.ImageResolution/32, clip.RN50.SpacialDim)
	require.Equal(t, cc.ContextLength, clip.RN50Text.ContextLength)
	require.Equal(t, cc.VocabSize, clip.RN50Text.VocabSize)
	require.Equal(t, cc.TransformerWidth, clip.RN50Text.Width)
	require.Equal(t, cc.TransformerHeads, clip.RN50Text.Heads)
	require.Equal(t, cc.TransformerLayers, clip.RN50Text.Layers)
	require.Equal(t, cc.EmbedDim, clip.RN50Text.EmbedDim)
	var prompts []string
	f.Field(t, "prompts", &prompts)
	require.Len(t, prompts, 2)
	for _, p := range prompts {
		require.Equal(t, strings.Repeat("X ", NCtx), p[:2*NCtx], "prompt %q", p)
	}
	require.Equal(t, "NR", f.Mode)
	require.False(t, f.LowerBetter)
}

// TestPrompt checks the prompt branch (computed once when the scorer is
// built) against the fixture, in forward order.
func TestPrompt(t *testing.T) {
	f := iqatest.Load(t, folder)
	exp := f.Expected(t)
	scorer(t, f)
	checked := 0
	for _, name := range tapOrder {
		x := promptTaps[name]
		if name == "prompt.tokens" || name == "prompt.eot_index" {
			testutil.AssertEqual(t, name, x, exp.Tensors[name])
		} else {
			exp.Check(t, name, x)
		}
		checked++
	}
	for name := range exp.Meta {
		if strings.HasPrefix(name, "prompt.") && !strings.HasSuffix(name, ".stats") {
			_, ok := promptTaps[name]
			require.True(t, ok, "%s: stored but not produced", name)
		}
	}
	require.Positive(t, checked)
}

func TestFixtures(t *testing.T) {
	f := iqatest.Load(t, folder)
	exp := f.Expected(t)
	images := f.Images(t)
	s := scorer(t, f)
	for _, c := range f.Cases {
		t.Run(c.Name, func(t *testing.T) {
			testutil.NoLeak(t)
			var cc struct {
				Layer4HW []int64 `json:"layer4_hw"`
			}
			require.NoError(t, json.Unmarshal(c.Raw, &cc))
			img := torch.Unscope(images[c.Image].ToDevice(testutil.Device(t)))
			defer img.Close()
			require.Equal(t, c.Shape, img.Shape())
			checked := map[string]bool{}
			got, err := s.ScoreTap(context.Background(), img, func(name string, x *torch.Tensor) {
				if name == "visual.layer4" {
					require.Equal(t, cc.Layer4HW, x.Shape()[2:])
				}
				if full := c.Name + "." + name; exp.Has(full) {
					exp.Check(t, full, x)
					checked[full] = true
				}
			})
			require.NoError(t, err)
			exp.CheckScores(t, c.Score, got)
			checked[c.Score] = true
			exp.RequireProduced(t, c.Name+".", checked)
		})
	}
}

func TestBatch(t *testing.T) {
	f := iqatest.Load(t, folder)
	s := scorer(t, f)
	f.CheckSameShapeBatches(t, f.Expected(t), f.Images(t), func(ctx context.Context, img *torch.Tensor) ([]float64, error) {
		return s.Score(ctx, img, nil)
	})
}

// TestPublishedFiles writes the weights as the published files (the learned
// context as a bare torch.save'd tensor under its published name, CLIP as a
// state-dict checkpoint) and checks that the metric opened by name from
// that directory scores exactly as the shared one; also the 2-D shared
// context form.
func TestPublishedFiles(t *testing.T) {
	f := iqatest.Load(t, folder)
	base := scorer(t, f)
	testutil.NoLeak(t)
	var model struct {
		Published map[string]any `json:"published"`
	}
	f.Field(t, "model", &model)
	pf, _ := model.Published["prompt_file"].(string)
	name, _, _ := strings.Cut(pf, " ")
	require.Equal(t, PromptFile, name)

	src := weights(t, f)
	dir := t.TempDir()
	ctx := nn.MapSource{"x": src[CtxKey]}
	iqatest.WriteTensorPth(t, filepath.Join(dir, PromptFile), ctx["x"])
	clipOnly := nn.MapSource{}
	for k, v := range src {
		if k != CtxKey {
			clipOnly[k] = v
		}
	}
	iqatest.WritePth(t, filepath.Join(dir, "RN50.pth"), "", clipOnly, nil)

	img := torch.Unscope(f.Images(t)[f.Cases[0].Image].ToDevice(testutil.Device(t)))
	defer img.Close()
	want, err := base.Score(context.Background(), img, nil)
	require.NoError(t, err)
	rs, err := reward.Open("clipiqa+", reward.OpenOptions{Weights: dir, Device: testutil.Device(t)})
	require.NoError(t, err)
	got, err := rs.Score(context.Background(), img, nil)
	require.NoError(t, err)
	require.Equal(t, want, got)
	require.NoError(t, rs.Close())

	// A 2-D context is shared by both prompts (pyiqa expands it).
	shared2d := torch.Scoped(func() *torch.Tensor { return src[CtxKey].Select(0, 0).Contiguous() })
	defer shared2d.Close()
	iqatest.WriteTensorPth(t, filepath.Join(dir, PromptFile), shared2d)
	s, err := Open(reward.OpenOptions{Weights: dir, Device: testutil.Device(t)})
	require.NoError(t, err)
	require.Equal(t, []int64{NCtx, clip.RN50Text.Width}, s.Model().Ctx.Shape())
	_, err = s.Score(context.Background(), img, nil)
	require.NoError(t, err)
	require.NoError(t, s.Close())
}

func TestBadInput(t *testing.T) {
	f := iqatest.Load(t, folder)
	s := scorer(t, f)
	dev := testutil.Device(t)
	testutil.NoLeak(t)
	mk := func(shape ...int64) *torch.Tensor {
		x := torch.Unscope(torch.Full(shape, 0.5, torch.Float32, dev))
		t.Cleanup(x.Close)
		return x
	}
	ctx := context.Background()
	over := torch.Unscope(mk(1, 3, 64, 64).AddScalar(1))
	defer over.Close()
	for _, tc := range []struct {
		name string
		img  *torch.Tensor
		msg  string
	}{
		{"gray", mk(1, 1, 64, 64), "want (N,3,H,W)"},
		{"rgba", mk(1, 4, 64, 64), "want (N,3,H,W)"},
		{"range", over, "[0,1]"},
	} {
		_, err := s.Score(ctx, tc.img, nil)
		require.ErrorContains(t, err, tc.msg, tc.name)
		require.ErrorContains(t, err, "clipiqa+", tc.name)
	}
	cancelled, cancel := context.WithCancel(ctx)
	cancel()
	_, err := s.Score(cancelled, mk(1, 3, 64, 64), nil)
	require.ErrorIs(t, err, context.Canceled)
	// A tiny image: the stem and stages floor to a 1×1 map (64 px) or fail
	// cleanly below that.
	got, err := s.Score(ctx, mk(2, 3, 64, 64), nil)
	require.NoError(t, err)
	require.Len(t, got, 2)
	_, err = s.Score(ctx, mk(1, 3, 8, 8), nil)
	if err != nil {
		require.ErrorContains(t, err, "clipiqa+")
	}

	dir := t.TempDir()
	_, err = Open(reward.OpenOptions{Weights: dir})
	require.ErrorContains(t, err, PromptFile)
	_, err = Open(reward.OpenOptions{})
	require.ErrorContains(t, err, "no weights")

	// The TOPIQ-style checkpoint layout ({'params': …}) is not a CLIP state
	// dict.
	src := weights(t, f)
	iqatest.WriteTensorPth(t, filepath.Join(dir, PromptFile), src[CtxKey])
	iqatest.WritePth(t, filepath.Join(dir, "RN50.pth"), "params", nn.MapSource{"visual.conv1.weight": src["visual.conv1.weight"]}, nil)
	_, err = Open(reward.OpenOptions{Weights: dir})
	require.ErrorContains(t, err, "not a dict of tensors")
	// A wrong context shape.
	iqatest.WritePth(t, filepath.Join(dir, "RN50.pth"), "", nn.MapSource{"visual.conv1.weight": src["visual.conv1.weight"]}, nil)
	bad := torch.Unscope(torch.Zeros([]int64{3, NCtx, 7}, torch.Float32, torch.CPU))
	defer bad.Close()
	iqatest.WriteTensorPth(t, filepath.Join(dir, PromptFile), bad)
	_, err = Open(reward.OpenOptions{Weights: dir})
	require.ErrorContains(t, err, "learned prompt context of shape [3 16 7]")
	// A CLIP state dict missing keys.
	iqatest.WriteTensorPth(t, filepath.Join(dir, PromptFile), src[CtxKey])
	_, err = Open(reward.OpenOptions{Weights: dir})
	require.ErrorContains(t, err, "missing keys")
	// A TorchScript archive under OpenAI's name is read as such (a tiny one:
	// torch/pickle/testdata/gen_torchscript.py; its CLIP-like keys do not fit
	// RN50, which the error reports key by key).
	require.NoError(t, os.Remove(filepath.Join(dir, "RN50.pth")))
	ts, err := os.ReadFile(filepath.Join("testdata", "torchscript_tiny.pt"))
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(filepath.Join(dir, CLIPFile), ts, 0o644))
	_, err = Open(reward.OpenOptions{Weights: dir})
	require.ErrorContains(t, err, "visual.conv1.weight: checkpoint [4 3 3 3]")
	require.NotContains(t, err.Error(), "attn_mask")
	require.NoError(t, os.Remove(filepath.Join(dir, CLIPFile)))
	iqatest.WritePth(t, filepath.Join(dir, "RN50.pth"), "", nn.MapSource{"visual.conv1.weight": src["visual.conv1.weight"]}, nil)
	// Truncated.
	b, err := os.ReadFile(filepath.Join(dir, "RN50.pth"))
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(filepath.Join(dir, "RN50.pth"), b[:len(b)/2], 0o644))
	_, err = Open(reward.OpenOptions{Weights: dir})
	require.Error(t, err)
}

// BenchmarkScore scores DP2O_BENCH_BATCH copies of the first case's image
// per call with DP2O_BENCH_THREADS libtorch threads (scripts/
// bench_iqa_models.py runs it beside pyiqa).
func BenchmarkScore(b *testing.B) {
	batch := iqatest.BenchEnv(b)
	f := iqatest.Load(b, folder)
	dev := testutil.Device(b)
	s, err := Open(reward.OpenOptions{Source: weights(b, f), Device: dev})
	require.NoError(b, err)
	defer s.Close()
	img := iqatest.Repeat(b, f.Images(b)[f.Cases[0].Image], batch, dev)
	iqatest.BenchScore(b, batch, func() error {
		_, err := s.Score(context.Background(), img, nil)
		return err
	})
}
