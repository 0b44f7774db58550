package maniqa

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
	"github.com/dp2osr/dp2o/vision/swin"
)

const folder = "iqa/maniqa"

var (
	once      sync.Once
	shared    *Scorer
	sharedErr error
)

func scorer(t *testing.T, f *iqatest.Folder) *Scorer {
	t.Helper()
	once.Do(func() { shared, sharedErr = Open(reward.OpenOptions{Source: f.Weights(t), Device: testutil.Device(t)}) })
	require.NoError(t, sharedErr)
	return shared
}

type fixtureConfig struct {
	EmbedDim   int64      `json:"embed_dim"`
	PatchSize  int64      `json:"patch_size"`
	ImgSize    int64      `json:"img_size"`
	NumTab     int        `json:"num_tab"`
	Depths     []int      `json:"depths"`
	NumHeads   []int64    `json:"num_heads"`
	WindowSize int64      `json:"window_size"`
	DimMLP     int64      `json:"dim_mlp"`
	Scale      float64    `json:"scale"`
	TestSample int64      `json:"test_sample"`
	Mean       [3]float64 `json:"mean"`
	Std        [3]float64 `json:"std"`
}

func TestConfigMatchesFixture(t *testing.T) {
	f := iqatest.Load(t, folder)
	var fc fixtureConfig
	f.Field(t, "config", &fc)
	c := KonIQ
	require.Equal(t, fc.EmbedDim, c.EmbedDim)
	require.Equal(t, fc.EmbedDim, c.ViTConfig.Dim)
	require.Equal(t, fc.PatchSize, c.Patch)
	require.Equal(t, fc.PatchSize, c.ViTConfig.Patch)
	require.Equal(t, fc.ImgSize, c.ImgSize)
	require.Equal(t, fc.ImgSize, c.ViTConfig.ImgSize)
	require.Equal(t, fc.NumTab, c.NumTab)
	require.Equal(t, fc.Depths, c.Depths)
	require.Equal(t, fc.NumHeads, c.NumHeads)
	require.Equal(t, fc.WindowSize, c.Window)
	require.Equal(t, fc.DimMLP, c.DimMLP)
	require.Equal(t, fc.Scale, c.Scale)
	require.Equal(t, fc.TestSample, c.TestSample)
	require.Equal(t, fc.Mean, c.Mean)
	require.Equal(t, fc.Std, c.Std)
	require.Equal(t, "NR", f.Mode)
	require.False(t, f.LowerBetter)
}

// TestLayout checks the crop geometry (upscale factor and size, steps,
// origins) of every case.
func TestLayout(t *testing.T) {
	f := iqatest.Load(t, folder)
	for _, c := range f.Cases {
		var mc struct {
			Crops struct {
				InputHW     [2]int64   `json:"input_hw"`
				Upscaled    bool       `json:"upscaled"`
				ScaleFactor float64    `json:"scale_factor"`
				UpscaledHW  [2]int64   `json:"upscaled_hw"`
				StepHW      [2]int64   `json:"step_hw"`
				Grid        int64      `json:"grid"`
				Origins     [][2]int64 `json:"crop_origins_yx"`
			} `json:"crops"`
		}
		require.NoError(t, json.Unmarshal(c.Raw, &mc))
		require.Equal(t, mc.Crops.InputHW[:], c.Shape[2:])
		l := KonIQ.Layout(c.Shape[2], c.Shape[3])
		require.Equal(t, mc.Crops.Upscaled, l.Upscaled, c.Name)
		if l.Upscaled {
			require.Equal(t, mc.Crops.ScaleFactor, l.ScaleFactor, c.Name)
			require.Equal(t, mc.Crops.UpscaledHW, l.Size, c.Name)
		}
		require.Equal(t, mc.Crops.StepHW, l.Step, c.Name)
		require.Equal(t, mc.Crops.Grid, l.Grid, c.Name)
		require.Equal(t, mc.Crops.Origins, l.Origins, c.Name)
	}
}

// TestSwinBuffers checks that the constant buffers the checkpoint holds
// (relative_position_index, attn_mask; fixed.safetensors) equal what
// vision/swin computes, which the port uses.
func TestSwinBuffers(t *testing.T) {
	f := iqatest.Load(t, folder)
	fixed := testutil.Tensors(t, f.Path(*f.Model.Fixed))
	res := KonIQ.ImgSize / KonIQ.Patch
	win := KonIQ.Window
	n := 0
	for name, tt := range fixed {
		switch {
		case strings.HasSuffix(name, "attn.relative_position_index"):
			require.Equal(t, swin.RelativePositionIndex([2]int64{win, win}), tt.Reshape([]int64{-1}).Int64s(), name)
			n++
		case strings.HasSuffix(name, "attn_mask"):
			require.Equal(t, swin.ShiftMask(res, res, win, win/2), tt.Reshape([]int64{-1}).Float32s(), name)
			n++
		}
	}
	require.Positive(t, n)
}

// TestFixtures runs every case (ViT-B/8 on 20 crops each: the slowest
// test of the module on a small CPU) and checks every stored intermediate
// in forward order.
func TestFixtures(t *testing.T) {
	if testing.Short() {
		t.Skip("MANIQA runs ViT-B/8 on 20 crops per image (about 2.6 TFLOP): run without -short")
	}
	f := iqatest.Load(t, folder)
	exp := f.Expected(t)
	images := f.Images(t)
	s := scorer(t, f)
	for _, c := range f.Cases {
		t.Run(c.Name, func(t *testing.T) {
			testutil.NoLeak(t)
			img := torch.Unscope(images[c.Image].ToDevice(testutil.Device(t)))
			defer img.Close()
			require.Equal(t, c.Shape, img.Shape())
			checked := map[string]bool{}
			got, err := s.ScoreTap(context.Background(), img, func(name string, x *torch.Tensor) {
				if full := c.Name + "." + name; exp.Has(full) {
					exp.Check(t, full, x)
					checked[full] = true
				}
			})
			require.NoError(t, err)
			exp.CheckScores(t, c.Score, got)
			checked[c.Score] = true
			for name := range exp.Meta {
				if !strings.HasPrefix(name, c.Name+".") || strings.HasSuffix(name, ".stats") {
					continue
				}
				// ViT blocks after the last one MANIQA uses are not run.
				if blk, ok := strings.CutPrefix(name, c.Name+".vit.blocks."); ok {
					var i int
					require.NoError(t, json.Unmarshal([]byte(blk), &i))
					if i > KonIQ.ViTBlocks[len(KonIQ.ViTBlocks)-1] {
						continue
					}
				}
				require.True(t, checked[name], "%s: stored but not produced", name)
			}
		})
	}
}

// TestPublishedCheckpoint writes the weights as the published checkpoint (a
// bare state dict with DataParallel's "module." prefix, under the published
// name) and checks that the metric opened by name from it holds exactly
// the same parameters as the one built from the state dict (scoring is
// covered by TestFixtures; a MANIQA forward costs minutes here).
func TestPublishedCheckpoint(t *testing.T) {
	f := iqatest.Load(t, folder)
	base := scorer(t, f)
	testutil.NoLeak(t)
	var pub struct {
		File string `json:"file"`
	}
	require.NoError(t, json.Unmarshal(f.Model.Published, &pub))
	file, _, _ := strings.Cut(strings.TrimSpace(pub.File), " ")
	require.Equal(t, WeightsFile, file)
	dir := t.TempDir()
	iqatest.WritePth(t, filepath.Join(dir, file), "", f.Weights(t), func(k string) string { return "module." + k })
	rs, err := reward.Open("maniqa", reward.OpenOptions{Weights: dir})
	require.NoError(t, err)
	s := rs.(*Scorer)
	require.Equal(t, base.params.Names, s.params.Names)
	for _, name := range base.params.Names {
		a, b := base.params.Get(name), s.params.Get(name)
		require.Equal(t, a.Closed(), b.Closed(), name)
		if !a.Closed() {
			sc := torch.NewScope()
			testutil.AssertEqual(t, name, b.ToDevice(torch.CPU), a.ToDevice(torch.CPU))
			sc.Close()
		}
	}
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
	for _, tc := range []struct {
		name string
		img  *torch.Tensor
		msg  string
	}{
		{"gray", mk(1, 1, 64, 64), "want (N,3,H,W)"},
		{"rgba", mk(1, 4, 64, 64), "want (N,3,H,W)"},
		{"3-d", mk(3, 64, 64), "want (N,3,H,W)"},
	} {
		_, err := s.Score(ctx, tc.img, nil)
		require.ErrorContains(t, err, tc.msg, tc.name)
		require.ErrorContains(t, err, "maniqa", tc.name)
	}
	cancelled, cancel := context.WithCancel(ctx)
	cancel()
	_, err := s.Score(cancelled, mk(1, 3, 64, 64), nil)
	require.ErrorIs(t, err, context.Canceled)
	// A tiny image is upscaled as pyiqa does: its shorter side becomes 225.
	l := KonIQ.Layout(1, 7)
	require.True(t, l.Upscaled)
	require.Equal(t, [2]int64{225, 1575}, l.Size)
	require.Len(t, l.Origins, int(KonIQ.TestSample))

	dir := t.TempDir()
	nested := filepath.Join(dir, "nested.pth")
	src := f.Weights(t)
	iqatest.WritePth(t, nested, "params", map[string]*torch.Tensor{"conv1.weight": src["conv1.weight"]}, nil)
	_, err = Open(reward.OpenOptions{Weights: nested})
	require.ErrorContains(t, err, "not a dict of tensors")
	partial := filepath.Join(dir, "partial.pth")
	iqatest.WritePth(t, partial, "", map[string]*torch.Tensor{"conv1.weight": src["conv1.weight"]}, nil)
	_, err = Open(reward.OpenOptions{Weights: partial})
	require.ErrorContains(t, err, "missing keys")
	b, err := os.ReadFile(partial)
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(partial, b[:len(b)/2], 0o644))
	_, err = Open(reward.OpenOptions{Weights: partial})
	require.Error(t, err)
	_, err = Open(reward.OpenOptions{Weights: dir})
	require.ErrorContains(t, err, WeightsFile)
	_, err = Open(reward.OpenOptions{})
	require.ErrorContains(t, err, "no weights")
}

// BenchmarkScore scores DP2O_BENCH_BATCH copies of the first case's image
// per call with DP2O_BENCH_THREADS libtorch threads (scripts/
// bench_iqa_models.py runs it beside pyiqa).
func BenchmarkScore(b *testing.B) {
	batch := iqatest.BenchEnv(b)
	f := iqatest.Load(b, folder)
	dev := testutil.Device(b)
	s, err := Open(reward.OpenOptions{Source: f.Weights(b), Device: dev})
	require.NoError(b, err)
	defer s.Close()
	img := iqatest.Repeat(b, f.Images(b)[f.Cases[0].Image], batch, dev)
	if _, err := s.Score(context.Background(), img, nil); err != nil { // warm-up
		b.Fatal(err)
	}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := s.Score(context.Background(), img, nil); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(int64(b.N)*batch)/b.Elapsed().Seconds(), "images/s")
}
