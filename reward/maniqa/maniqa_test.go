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

// TestFixtures checks every case and every stored intermediate in forward
// order. A case runs ViT-B/8 on 20 crops (about 2.6 TFLOP: minutes on a
// small CPU, and far more with the reference BLAS), but no stage mixes
// crops and the fixture stores its intermediates for a few of them
// (io.json's slice on the crop axis). So by default the preprocessing runs
// on the whole image, the network on exactly the stored crops, whose
// intermediates and per-patch scores and weights are compared, and the
// pooling on the fixture's per-patch scores and weights of all crops,
// compared with the stored score. DP2O_IQA_FULL=1 runs every crop through
// the scorer end to end as well.
func TestFixtures(t *testing.T) {
	f := iqatest.Load(t, folder)
	exp := f.Expected(t)
	images := f.Images(t)
	s := scorer(t, f)
	full := os.Getenv("DP2O_IQA_FULL") == "1"
	for _, c := range f.Cases {
		t.Run(c.Name, func(t *testing.T) {
			testutil.NoLeak(t)
			img := torch.Unscope(images[c.Image].ToDevice(testutil.Device(t)))
			defer img.Close()
			require.Equal(t, c.Shape, img.Shape())
			checked := map[string]bool{}
			if full {
				got, err := s.ScoreTap(context.Background(), img, func(name string, x *torch.Tensor) {
					if n := c.Name + "." + name; exp.Has(n) {
						exp.Check(t, n, x)
						checked[n] = true
					}
				})
				require.NoError(t, err)
				exp.CheckScores(t, c.Score, got)
				checked[c.Score] = true
			} else {
				checkStoredCrops(t, s.Model(), exp, c.Name, c.Score, img, checked)
			}
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

// cropAxis reads the crop indices a stored intermediate keeps from its
// io.json slice on axis 0 (nil: every crop).
func cropAxis(t *testing.T, m iqatest.TensorMeta) []int64 {
	t.Helper()
	if len(m.Slice) == 0 || string(m.Slice[0]) == "null" {
		return nil
	}
	var v []int64
	require.NoError(t, json.Unmarshal(m.Slice[0], &v))
	require.True(t, len(v) == 2 || len(v) == 3, "slice %v", v)
	step := int64(1)
	if len(v) == 3 {
		step = v[2]
	}
	var idx []int64
	for i := v[0]; i < min(v[1], m.Shape[0]); i += step {
		idx = append(idx, i)
	}
	return idx
}

// checkStoredCrops is TestFixtures' default path for one case (see there).
func checkStoredCrops(t *testing.T, m *Model, exp *iqatest.Expected, name, scoreKey string, img *torch.Tensor, checked map[string]bool) {
	sc := torch.NewScope()
	defer sc.Close()
	// The crops stored for the network's intermediates, taken from the
	// first ViT tensor's slice (every per-crop tensor stores the same);
	// a case that stores none of them is checked on its first and last
	// crops through the per-patch scores and weights.
	var idx []int64
	for k, meta := range exp.Meta {
		if strings.HasPrefix(k, name+".vit.") {
			idx = cropAxis(t, meta)
			break
		}
	}
	// The same tensors for a batch of just those crops: their slice on the
	// crop axis becomes "all", and whole-tensor stats no longer apply.
	sub := &iqatest.Expected{Tensors: exp.Tensors, Meta: map[string]iqatest.TensorMeta{}}
	for k, meta := range exp.Meta {
		if !strings.HasPrefix(k, name+".") || len(meta.Slice) == 0 {
			continue
		}
		if ci := cropAxis(t, meta); ci != nil && len(ci) == len(idx) {
			mm := meta
			mm.Shape = append([]int64{int64(len(idx))}, meta.Shape[1:]...)
			mm.Slice = append([]json.RawMessage{json.RawMessage("null")}, meta.Slice[1:]...)
			mm.Stats = ""
			sub.Meta[k] = mm
		}
	}
	var ps, pw *torch.Tensor
	err := torch.Try(func() {
		torch.NoGrad(func() {
			crops := m.cropBatch(img, func(n string, x *torch.Tensor) {
				if k := name + "." + n; exp.Has(k) {
					exp.Check(t, k, x)
					checked[k] = true
				}
			})
			if idx == nil {
				idx = []int64{0, crops.Size(0) - 1}
			}
			picked := crops.IndexSelect(0, torch.FromSlice(idx).ToDevice(crops.Device()))
			ps, pw = m.forwardCrops(picked, func(n string, x *torch.Tensor) {
				k := name + "." + n
				if _, ok := sub.Meta[k]; ok {
					sub.Check(t, k, x)
					checked[k] = true
				}
			})
		})
	})
	require.NoError(t, err)
	// Per-patch scores and weights: the stored crops' segments of the
	// stored rows (every crop's patches consecutive); forwardCrops gives
	// a row per crop.
	perCrop := ps.Size(1)
	for _, k := range []string{"per_patch_score", "per_patch_weight"} {
		want := exp.Tensors[name+"."+k]
		require.NotNil(t, want, k)
		var segs []*torch.Tensor
		for _, i := range idx {
			segs = append(segs, want.Narrow(1, i*perCrop, perCrop))
		}
		got := ps
		if k == "per_patch_weight" {
			got = pw
		}
		got = got.Reshape([]int64{1, -1})
		w := torch.Cat(segs, 1).To(torch.Float64)
		testutil.AssertClose(t, name+"."+k, got.ToDevice(torch.CPU).To(torch.Float64), w, iqatest.RelTol*w.Abs().Max().Item(), 0)
		checked[name+"."+k] = true
	}
	// The pooling over all crops, on the stored per-patch values.
	score := pool(exp.Tensors[name+".per_patch_score"], exp.Tensors[name+".per_patch_weight"])
	exp.CheckScores(t, scoreKey, score.Float64s())
	checked[scoreKey] = true
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
	testutil.NoLeak(t)
	iqatest.CheckNRInputErrors(t, s)
	var err error
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
	iqatest.BenchScore(b, batch, func() error {
		_, err := s.Score(context.Background(), img, nil)
		return err
	})
}
