package topiq

import (
	"context"
	"encoding/json"
	"fmt"
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
)

// folders are the fixture folders of the two metrics.
var folders = []string{"iqa/topiq_nr", "iqa/topiq_fr"}

// fixtureConfig is the part of cases.json's config the Go configs encode.
type fixtureConfig struct {
	InterDim       int64      `json:"inter_dim"`
	NumHeads       int64      `json:"num_heads"`
	NumAttnLayers  int64      `json:"num_attn_layers"`
	DimFeedforward int64      `json:"dim_feedforward"`
	UseRef         bool       `json:"use_ref"`
	NumCrop        int        `json:"num_crop"`
	TestImgSize    any        `json:"test_img_size"`
	Mean           [3]float64 `json:"mean"`
	Std            [3]float64 `json:"std"`
}

type topiqCase struct {
	LevelHW [][2]int64 `json:"level_hw"`
}

var (
	loadMu sync.Mutex
	loaded = map[string]*Scorer{}
)

// scorer opens the folder's metric once per package, from the
// deterministic weights in pyiqa's own layout.
func scorer(t *testing.T, f *iqatest.Folder) *Scorer {
	t.Helper()
	loadMu.Lock()
	defer loadMu.Unlock()
	if s, ok := loaded[f.PyiqaName]; ok {
		return s
	}
	s, err := Open(f.PyiqaName, reward.OpenOptions{Source: f.Weights(t), Device: testutil.Device(t)})
	require.NoError(t, err)
	loaded[f.PyiqaName] = s
	return s
}

// inputs returns the case's image and reference (nil for NR) on the test
// device.
func inputs(t *testing.T, f *iqatest.Folder, images map[string]*torch.Tensor, c iqatest.Case) (img, ref *torch.Tensor) {
	t.Helper()
	dev := testutil.Device(t)
	name := c.Image
	if f.Mode == "FR" {
		name = c.Dist
		ref = images[c.Ref]
		require.NotNil(t, ref, "input %q", c.Ref)
		ref = torch.Unscope(ref.ToDevice(dev))
		t.Cleanup(ref.Close)
	}
	img = images[name]
	require.NotNil(t, img, "input %q", name)
	img = torch.Unscope(img.ToDevice(dev))
	t.Cleanup(img.Close)
	return img, ref
}

func TestConfigMatchesFixture(t *testing.T) {
	for _, rel := range folders {
		f := iqatest.Load(t, rel)
		var fc fixtureConfig
		f.Field(t, "config", &fc)
		cfg := NRConfig
		if f.PyiqaName == "topiq_fr" {
			cfg = FRConfig
		}
		require.Equal(t, fc.UseRef, cfg.UseRef, rel)
		require.Equal(t, f.Mode == "FR", cfg.UseRef, rel)
		require.False(t, f.LowerBetter, rel)
		require.Equal(t, fc.InterDim, cfg.InterDim, rel)
		require.Equal(t, fc.NumHeads, cfg.NumHeads, rel)
		require.Equal(t, fc.NumAttnLayers, cfg.NumAttnLayers, rel)
		require.Equal(t, fc.DimFeedforward, cfg.DimFeedforward, rel)
		require.Equal(t, fc.Mean, cfg.Mean, rel)
		require.Equal(t, fc.Std, cfg.Std, rel)
		require.Equal(t, 1, fc.NumCrop, "%s: only the single-crop (whole image) path is ported", rel)
		require.Nil(t, fc.TestImgSize, "%s: only the no-resize path is ported", rel)
	}
}

// TestFixtures runs every case of both folders and checks every stored
// intermediate in forward order (the first diverging stage fails the test),
// the feature-map sizes and the score.
func TestFixtures(t *testing.T) {
	for _, rel := range folders {
		f := iqatest.Load(t, rel)
		exp := f.Expected(t)
		images := f.Images(t)
		s := scorer(t, f)
		for _, c := range f.Cases {
			t.Run(f.PyiqaName+"/"+c.Name, func(t *testing.T) {
				testutil.NoLeak(t)
				var tc topiqCase
				require.NoError(t, json.Unmarshal(c.Raw, &tc))
				img, ref := inputs(t, f, images, c)
				require.Equal(t, c.Shape, img.Shape())
				checked := map[string]bool{}
				tap := func(name string, x *torch.Tensor) {
					if lvl, ok := strings.CutPrefix(name, "backbone.dist."); ok {
						var i int
						fmt.Sscan(lvl, &i)
						require.Equal(t, tc.LevelHW[i][:], x.Shape()[2:], "%s level %d size", c.Name, i)
					}
					full := c.Name + "." + name
					if exp.Has(full) {
						exp.Check(t, full, x)
						checked[full] = true
					}
				}
				got, err := s.ScoreTap(context.Background(), img, ref, tap)
				require.NoError(t, err)
				exp.CheckScores(t, c.Score, got)
				checked[c.Score] = true
				for name, meta := range exp.Meta {
					_ = meta
					if strings.HasPrefix(name, c.Name+".") && !strings.HasSuffix(name, ".stats") && !checked[name] {
						t.Errorf("%s: stored in io.json but never produced by the port", name)
					}
				}
				if c.HasIntermediates() {
					require.Greater(t, len(checked), 2, "a case with intermediates checked only its score")
				}
			})
		}
	}
}

// TestBatch scores the cases of equal shape as one batch: each row must
// match its own case.
func TestBatch(t *testing.T) {
	for _, rel := range folders {
		f := iqatest.Load(t, rel)
		exp := f.Expected(t)
		images := f.Images(t)
		s := scorer(t, f)
		groups := map[string][]iqatest.Case{}
		for _, c := range f.Cases {
			k := fmt.Sprint(c.Shape)
			groups[k] = append(groups[k], c)
		}
		for _, cs := range groups {
			if len(cs) < 2 {
				continue
			}
			t.Run(f.PyiqaName+"/"+cs[0].Name, func(t *testing.T) {
				testutil.NoLeak(t)
				var imgs, refs []*torch.Tensor
				for _, c := range cs {
					img, ref := inputs(t, f, images, c)
					imgs, refs = append(imgs, img), append(refs, ref)
				}
				img := torch.Unscope(torch.Cat(imgs, 0))
				defer img.Close()
				var ref *torch.Tensor
				if f.Mode == "FR" {
					ref = torch.Unscope(torch.Cat(refs, 0))
					defer ref.Close()
				}
				got, err := s.Score(context.Background(), img, ref)
				require.NoError(t, err)
				require.Len(t, got, len(cs))
				for i, c := range cs {
					exp.CheckScores(t, c.Score, got[i:i+1])
				}
				if f.Mode == "FR" && sameRef(cs) {
					// One reference expanded over the group (the reward's
					// case): the reference branch runs once.
					one := refs[0].Expand([]int64{int64(len(cs)), -1, -1, -1})
					defer one.Close()
					require.Zero(t, one.Strides()[0])
					got, err := s.Score(context.Background(), img, one)
					require.NoError(t, err)
					for i, c := range cs {
						exp.CheckScores(t, c.Score, got[i:i+1])
					}
				}
			})
		}
	}
}

// TestPublishedCheckpoint writes the deterministic weights in the published
// layout ({'params': state_dict} with DataParallel's "module." prefix,
// under the published file name), opens the metric by name from that
// directory and from the file, and checks that it scores exactly as the
// model built from the state dict.
func TestPublishedCheckpoint(t *testing.T) {
	for _, rel := range folders {
		t.Run(rel, func(t *testing.T) {
			f := iqatest.Load(t, rel)
			base := scorer(t, f) // loaded once per package: not a leak of this test
			testutil.NoLeak(t)
			var pub struct {
				File string `json:"file"`
			}
			require.NoError(t, json.Unmarshal(f.Model.Published, &pub))
			file, _, _ := strings.Cut(strings.TrimSpace(pub.File), " ")
			want := map[string]string{"topiq_nr": NRWeightsFile, "topiq_fr": FRWeightsFile}[f.PyiqaName]
			require.Equal(t, file, want, "published file name")
			dir := t.TempDir()
			path := filepath.Join(dir, file)
			iqatest.WritePth(t, path, "params", f.Weights(t), func(k string) string { return "module." + k })

			images := f.Images(t)
			img, ref := inputs(t, f, images, f.Cases[0])
			baseScores, err := base.Score(context.Background(), img, ref)
			require.NoError(t, err)
			for _, w := range []string{dir, path} {
				s, err := reward.Open(f.PyiqaName, reward.OpenOptions{Weights: w, Device: testutil.Device(t)})
				require.NoError(t, err)
				got, err := s.Score(context.Background(), img, ref)
				require.NoError(t, err)
				require.Equal(t, baseScores, got, "scores from the published-layout checkpoint")
				require.NoError(t, s.Close())
			}
		})
	}
}

// TestBadInput checks that bad images, pairs, contexts and checkpoints give
// clear errors.
func TestBadInput(t *testing.T) {
	fNR, fFR := iqatest.Load(t, folders[0]), iqatest.Load(t, folders[1])
	nr, fr := scorer(t, fNR), scorer(t, fFR)
	dev := testutil.Device(t)
	testutil.NoLeak(t)
	mk := func(shape ...int64) *torch.Tensor {
		x := torch.Unscope(torch.Full(shape, 0.5, torch.Float32, dev))
		t.Cleanup(x.Close)
		return x
	}
	ctx := context.Background()
	good := mk(1, 3, 64, 64)
	for _, tc := range []struct {
		name     string
		s        reward.Scorer
		img, ref *torch.Tensor
		msg      string
	}{
		{"gray", nr, mk(1, 1, 64, 64), nil, "want (N,3,H,W)"},
		{"rgba", nr, mk(1, 4, 64, 64), nil, "want (N,3,H,W)"},
		{"3-d", nr, mk(3, 64, 64), nil, "want (N,3,H,W)"},
		{"range", nr, torch.Unscope(good.MulScalar(3)), nil, "[0,1]"},
		{"fr sizes", fr, good, mk(1, 3, 64, 32), "differ in size"},
		{"fr batch", fr, good, mk(2, 3, 64, 64), "differ in size"},
		{"fr no ref", fr, good, nil, "no reference"},
		{"int", nr, torch.Unscope(torch.Zeros([]int64{1, 3, 8, 8}, torch.Uint8, dev)), nil, "floating-point"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := tc.s.Score(ctx, tc.img, tc.ref)
			require.ErrorContains(t, err, tc.msg)
			require.ErrorContains(t, err, tc.s.Name())
		})
	}
	cancelled, cancel := context.WithCancel(ctx)
	cancel()
	_, err := nr.Score(cancelled, good, nil)
	require.ErrorIs(t, err, context.Canceled)

	// Tiny images run (every stage is at least 1×1), as in pyiqa.
	for _, hw := range [][2]int64{{1, 1}, {7, 33}} {
		got, err := nr.Score(ctx, mk(2, 3, hw[0], hw[1]), nil)
		require.NoError(t, err, "%v", hw)
		require.Len(t, got, 2)
	}

	// Checkpoints that do not fit.
	dir := t.TempDir()
	frPath := filepath.Join(dir, "fr.pth")
	iqatest.WritePth(t, frPath, "params", fFR.Weights(t), nil)
	_, err = Open("topiq_nr", reward.OpenOptions{Weights: frPath})
	require.ErrorContains(t, err, "shape mismatches")
	require.ErrorContains(t, err, "missing keys")
	require.ErrorContains(t, err, "weight_pool.0.splitconv.weight")

	flat := filepath.Join(dir, "flat.pth")
	iqatest.WritePth(t, flat, "", fNR.Weights(t), nil)
	_, err = Open("topiq_nr", reward.OpenOptions{Weights: flat})
	require.ErrorContains(t, err, "params")

	trunc := filepath.Join(dir, "trunc.pth")
	b, err := os.ReadFile(frPath)
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(trunc, b[:len(b)/2], 0o644))
	_, err = Open("topiq_fr", reward.OpenOptions{Weights: trunc})
	require.Error(t, err)

	_, err = Open("topiq_nr", reward.OpenOptions{Weights: dir}) // no file of the published name
	require.ErrorContains(t, err, NRWeightsFile)
	_, err = Open("topiq_nr", reward.OpenOptions{})
	require.ErrorContains(t, err, "no weights")
	_, err = Open("topiq_xx", reward.OpenOptions{})
	require.Error(t, err)
}

// BenchmarkScore scores DP2O_BENCH_BATCH copies of the first case's image
// per call (FR: against its reference repeated in memory, "pairs", and
// expanded, "group": one reference for a group of candidates) with
// DP2O_BENCH_THREADS libtorch threads (scripts/bench_iqa_models.py runs it
// beside pyiqa).
func BenchmarkScore(b *testing.B) {
	batch := iqatest.BenchEnv(b)
	for _, rel := range folders {
		f := iqatest.Load(b, rel)
		dev := testutil.Device(b)
		s, err := Open(f.PyiqaName, reward.OpenOptions{Source: f.Weights(b), Device: dev})
		require.NoError(b, err)
		images := f.Images(b)
		c := f.Cases[0]
		var modes map[string][2]*torch.Tensor
		if f.Mode == "FR" {
			img := iqatest.Repeat(b, images[c.Dist], batch, dev)
			modes = map[string][2]*torch.Tensor{
				"pairs": {img, iqatest.Repeat(b, images[c.Ref], batch, dev)},
				"group": {img, iqatest.Expand(b, images[c.Ref], batch, dev)},
			}
		} else {
			modes = map[string][2]*torch.Tensor{"nr": {iqatest.Repeat(b, images[c.Image], batch, dev), nil}}
		}
		for mode, in := range modes {
			b.Run(f.PyiqaName+"/"+mode, func(b *testing.B) {
				iqatest.BenchScore(b, batch, func() error {
					_, err := s.Score(context.Background(), in[0], in[1])
					return err
				})
			})
		}
		require.NoError(b, s.Close())
	}
}

// sameRef reports whether every case has the same reference image.
func sameRef(cs []iqatest.Case) bool {
	for _, c := range cs {
		if c.Ref != cs[0].Ref {
			return false
		}
	}
	return true
}

// TestDenseFallback scores the first case of each folder with gradients on:
// the backbone then runs on dense tensors, with the convolution weights
// that a float32 CPU model keeps packed for oneDNN reordered back per call
// (and on any other device, the same path as TestFixtures). The score must
// still match the fixture.
func TestDenseFallback(t *testing.T) {
	for _, rel := range folders {
		f := iqatest.Load(t, rel)
		exp := f.Expected(t)
		images := f.Images(t)
		s := scorer(t, f)
		c := f.Cases[0]
		t.Run(f.PyiqaName, func(t *testing.T) {
			testutil.NoLeak(t)
			img, ref := inputs(t, f, images, c)
			var got []float64
			err := torch.Try(func() {
				sc := torch.NewScope()
				defer sc.Close()
				torch.EnableGrad(func() {
					require.True(t, torch.GradEnabled())
					var err error
					got, err = reward.ScoresOf(s.Model().Forward(img, ref, nil))
					require.NoError(t, err)
				})
			})
			require.NoError(t, err)
			exp.CheckScores(t, c.Score, got)
		})
	}
}
