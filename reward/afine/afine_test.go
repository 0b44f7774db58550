package afine

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
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
	"github.com/dp2osr/dp2o/torch/nn"
	"github.com/dp2osr/dp2o/vision/clip"
)

const folder = "iqa/afine"

// load reads the folder. Its cases.json names two pyiqa metrics
// (pyiqa_name is a list, mode a map), which iqatest.Load's Folder does not
// decode, so the Folder is filled here.
func load(t testing.TB) *iqatest.Folder {
	t.Helper()
	dir := testutil.Fixture(t, folder)
	raw, err := os.ReadFile(filepath.Join(dir, "cases.json"))
	require.NoError(t, err)
	var top struct {
		LowerBetter bool              `json:"lower_better"`
		Inputs      string            `json:"inputs"`
		Model       iqatest.Model     `json:"model"`
		Cases       []json.RawMessage `json:"cases"`
	}
	require.NoError(t, json.Unmarshal(raw, &top))
	f := &iqatest.Folder{Dir: dir, Rel: folder, Metric: "afine", LowerBetter: top.LowerBetter, Inputs: top.Inputs, Model: top.Model}
	require.NoError(t, json.Unmarshal(raw, &f.Raw))
	for _, c := range top.Cases {
		var cs iqatest.Case
		require.NoError(t, json.Unmarshal(c, &cs))
		cs.Raw = c
		f.Cases = append(f.Cases, cs)
	}
	require.NotEmpty(t, f.Cases)
	return f
}

var (
	loadMu sync.Mutex
	loaded = map[string]*Scorer{}
)

func scorer(t *testing.T, f *iqatest.Folder, name string) *Scorer {
	t.Helper()
	loadMu.Lock()
	defer loadMu.Unlock()
	if s, ok := loaded[name]; ok {
		return s
	}
	s, err := Open(name, reward.OpenOptions{Source: f.Weights(t), Device: testutil.Device(t)})
	require.NoError(t, err)
	loaded[name] = s
	return s
}

// prefix is the io.json prefix of a case: "fr.<name>." or "nr.<name>.".
func prefix(c iqatest.Case) string {
	return strings.TrimPrefix(c.Metric, "afine_") + "." + c.Name + "."
}

func TestConfigMatchesFixture(t *testing.T) {
	f := load(t)
	var cc struct {
		VisionLayers    int   `json:"vision_layers"`
		VisionWidth     int64 `json:"vision_width"`
		VisionPatchSize int64 `json:"vision_patch_size"`
		ImageResolution int64 `json:"image_resolution"`
		EmbedDim        int64 `json:"embed_dim"`
	}
	f.Field(t, "clip_config", &cc)
	require.Equal(t, cc.VisionLayers, clip.ViTB32.Layers)
	require.Equal(t, cc.VisionLayers, numFeatureLevels)
	require.Equal(t, cc.VisionWidth, clip.ViTB32.Width)
	require.Equal(t, cc.VisionWidth, int64(levelFeatures))
	require.Equal(t, cc.VisionWidth/64, clip.ViTB32.Heads)
	require.Equal(t, cc.VisionPatchSize, clip.ViTB32.Patch)
	require.Equal(t, cc.ImageResolution, clip.ViTB32.InputResolution)
	require.Equal(t, cc.EmbedDim, clip.ViTB32.OutputDim)
	var mean, std [3]float64
	f.Field(t, "mean", &mean)
	f.Field(t, "std", &std)
	require.Equal(t, mean, clipMean)
	require.Equal(t, std, clipStd)
	var cal struct {
		FR struct {
			Y1, Y2 float64
			Y3     [2]float64 `json:"yita3_range"`
			Y4     [2]float64 `json:"yita4_range"`
		} `json:"net_scale_fr"`
		NR    struct{ Y1, Y2 float64 } `json:"net_scale_nr"`
		Final struct {
			Y1 float64 `json:"yita1"`
			Y2 float64 `json:"yita2"`
			Y3 float64 `json:"yita3"`
			Y4 float64 `json:"yita4"`
		} `json:"scale_finalscore"`
	}
	var raw map[string]map[string]json.RawMessage
	f.Field(t, "calibration", &raw)
	f.Field(t, "calibration", &cal)
	for _, sec := range []string{"net_scale_fr", "net_scale_nr"} {
		var y1, y2 float64
		require.NoError(t, json.Unmarshal(raw[sec]["yita1"], &y1))
		require.NoError(t, json.Unmarshal(raw[sec]["yita2"], &y2))
		require.Equal(t, [2]float64{yita1, yita2}, [2]float64{y1, y2}, sec)
	}
	require.Equal(t, [2]float64{fr3Lo, fr3Hi}, cal.FR.Y3)
	require.Equal(t, [2]float64{fr4Lo, fr4Hi}, cal.FR.Y4)
	require.Equal(t, [4]float64{finalY1, finalY2, finalY3, finalY4}, [4]float64{cal.Final.Y1, cal.Final.Y2, cal.Final.Y3, cal.Final.Y4})
	require.True(t, f.LowerBetter)
}

func TestFixtures(t *testing.T) {
	f := load(t)
	exp := f.Expected(t)
	images := f.Images(t)
	for _, c := range f.Cases {
		s := scorer(t, f, c.Metric)
		t.Run(c.Metric+"/"+c.Name, func(t *testing.T) {
			testutil.NoLeak(t)
			dev := testutil.Device(t)
			name := c.Image
			var ref *torch.Tensor
			if s.FullReference() {
				name = c.Dist
				ref = torch.Unscope(images[c.Ref].ToDevice(dev))
				defer ref.Close()
			}
			img := torch.Unscope(images[name].ToDevice(dev))
			defer img.Close()
			before := torch.Unscope(img.Clone())
			defer before.Close()
			p := prefix(c)
			checked := map[string]bool{}
			got, err := s.ScoreTap(context.Background(), img, ref, func(n string, x *torch.Tensor) {
				if full := p + n; exp.Has(full) {
					exp.Check(t, full, x)
					checked[full] = true
				}
			})
			require.NoError(t, err)
			exp.CheckScores(t, c.Score, got)
			checked[c.Score] = true
			// Without a tap, FR encodes the image and its reference as one
			// batch: the same score.
			got, err = s.Score(context.Background(), img, ref)
			require.NoError(t, err)
			exp.CheckScores(t, c.Score, got)
			if ref != nil {
				checkGroup(t, s, exp, c.Score, img, ref)
			}
			testutil.AssertEqual(t, "input after scoring (pyiqa normalises in place; the port must not)", img, before)
			exp.RequireProduced(t, p, checked)
		})
	}
}

// checkGroup scores two different images against ref expanded over them
// (one reference for a group: encoded once, beside them, without a tap):
// img's score is the case's, and the other image's (ref itself) is the one
// the tapped path, which encodes every image on its own, gives it.
func checkGroup(t *testing.T, s *Scorer, exp *iqatest.Expected, scoreKey string, img, ref *torch.Tensor) {
	t.Helper()
	sc := torch.NewScope()
	defer sc.Close()
	self, err := s.ScoreTap(context.Background(), ref, ref, func(string, *torch.Tensor) {})
	require.NoError(t, err)
	two := torch.Cat([]*torch.Tensor{img, ref}, 0)
	got, err := s.Score(context.Background(), two, ref.Expand([]int64{2, -1, -1, -1}))
	require.NoError(t, err)
	require.Len(t, got, 2)
	exp.CheckScores(t, scoreKey, got[:1])
	require.InDelta(t, self[0], got[1], iqatest.RelTol*math.Abs(self[0])+iqatest.ScoreAbsTol, "the reference against itself")
	require.Greater(t, math.Abs(got[0]-got[1]), iqatest.RelTol*math.Abs(got[0]), "the two images score alike: a row mix-up would not show")
}

// TestBatch scores the NR cases (same shape) as one batch.
func TestBatch(t *testing.T) {
	f := load(t)
	exp := f.Expected(t)
	images := f.Images(t)
	groups := map[string][]iqatest.Case{}
	for _, c := range f.Cases {
		k := c.Metric + fmt.Sprint(c.Shape)
		groups[k] = append(groups[k], c)
	}
	for _, cs := range groups {
		if len(cs) < 2 {
			continue
		}
		s := scorer(t, f, cs[0].Metric)
		testutil.NoLeak(t)
		var imgs, refs []*torch.Tensor
		for _, c := range cs {
			if s.FullReference() {
				imgs, refs = append(imgs, images[c.Dist]), append(refs, images[c.Ref])
			} else {
				imgs = append(imgs, images[c.Image])
			}
		}
		img := torch.Unscope(torch.Cat(imgs, 0))
		var ref *torch.Tensor
		if refs != nil {
			ref = torch.Unscope(torch.Cat(refs, 0))
		}
		got, err := s.Score(context.Background(), img, ref)
		require.NoError(t, err)
		for i, c := range cs {
			exp.CheckScores(t, c.Score, got[i:i+1])
		}
		if s.FullReference() && sameRef(cs) {
			// One reference expanded over the group: encoded once.
			one := torch.Unscope(images[cs[0].Ref].Expand([]int64{int64(len(cs)), -1, -1, -1}))
			got, err := s.Score(context.Background(), img, one)
			one.Close()
			require.NoError(t, err)
			for i, c := range cs {
				exp.CheckScores(t, c.Score, got[i:i+1])
			}
		}
		img.Close()
		ref.Close()
	}
}

// TestPublishedCheckpoint writes afine.pth as published (six state dicts
// under their section keys) and opens both metrics from it.
func TestPublishedCheckpoint(t *testing.T) {
	f := load(t)
	var pub struct {
		File string `json:"file"`
	}
	require.NoError(t, json.Unmarshal(f.Model.Published, &pub))
	file, _, _ := strings.Cut(strings.TrimSpace(pub.File), " ")
	require.Equal(t, WeightsFile, file)
	fr := scorer(t, f, "afine_fr")
	testutil.NoLeak(t)
	src := f.Weights(t)
	dir := t.TempDir()
	path := filepath.Join(dir, file)
	sections := map[string]nn.MapSource{}
	for k, v := range src {
		found := false
		for _, sec := range Sections {
			if rest, ok := strings.CutPrefix(k, sec[1]+"."); ok {
				if sections[sec[0]] == nil {
					sections[sec[0]] = nn.MapSource{}
				}
				sections[sec[0]][rest] = v
				found = true
			}
		}
		require.True(t, found, k)
	}
	iqatest.WritePthSections(t, path, sections)
	images := f.Images(t)
	c := f.Cases[0]
	want, err := fr.Score(context.Background(), images[c.Dist], images[c.Ref])
	require.NoError(t, err)
	s, err := reward.Open("afine_fr", reward.OpenOptions{Weights: dir})
	require.NoError(t, err)
	got, err := s.Score(context.Background(), images[c.Dist], images[c.Ref])
	require.NoError(t, err)
	require.Equal(t, want, got)
	require.NoError(t, s.Close())
}

func TestBadInput(t *testing.T) {
	f := load(t)
	fr, nr := scorer(t, f, "afine_fr"), scorer(t, f, "afine_nr")
	dev := testutil.Device(t)
	testutil.NoLeak(t)
	mk := func(shape ...int64) *torch.Tensor {
		x := torch.Unscope(torch.Full(shape, 0.5, torch.Float32, dev))
		t.Cleanup(x.Close)
		return x
	}
	ctx := context.Background()
	for _, tc := range []struct {
		name     string
		s        reward.Scorer
		img, ref *torch.Tensor
		msg      string
	}{
		{"gray", nr, mk(1, 1, 64, 64), nil, "want (N,3,H,W)"},
		{"not /32", nr, mk(1, 3, 64, 48), nil, "divisible by 32"},
		{"fr sizes", fr, mk(1, 3, 64, 64), mk(1, 3, 64, 96), "differ in size"},
		{"fr no ref", fr, mk(1, 3, 64, 64), nil, "no reference"},
	} {
		_, err := tc.s.Score(ctx, tc.img, tc.ref)
		require.ErrorContains(t, err, tc.msg, tc.name)
		require.ErrorContains(t, err, tc.s.Name(), tc.name)
	}
	got, err := nr.Score(ctx, mk(1, 3, 32, 32), nil) // one token
	require.NoError(t, err)
	require.Len(t, got, 1)

	dir := t.TempDir()
	_, err = Open("afine_nr", reward.OpenOptions{Weights: dir})
	require.ErrorContains(t, err, WeightsFile)
	// A flat state dict is not the published layout.
	flat := filepath.Join(dir, "flat.pth")
	iqatest.WritePth(t, flat, "", nn.MapSource{"adapter.k": f.Weights(t)["adapter.k"]}, nil)
	_, err = Open("afine_fr", reward.OpenOptions{Weights: flat})
	require.ErrorContains(t, err, "finetuned_clip")
	b, err := os.ReadFile(flat)
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(flat, b[:len(b)/2], 0o644))
	_, err = Open("afine_fr", reward.OpenOptions{Weights: flat})
	require.Error(t, err)
	_, err = Open("afine_xx", reward.OpenOptions{})
	require.Error(t, err)
}

// BenchmarkScore scores DP2O_BENCH_BATCH copies of each metric's first
// case per call (afine_fr: against the reference repeated, "pairs", and
// expanded, "group") with DP2O_BENCH_THREADS libtorch threads
// (scripts/bench_iqa_models.py runs it beside pyiqa, which takes one image
// per call).
func BenchmarkScore(b *testing.B) {
	batch := iqatest.BenchEnv(b)
	f := load(b)
	images := f.Images(b)
	dev := testutil.Device(b)
	for _, name := range []string{"afine_fr", "afine_nr"} {
		s, err := Open(name, reward.OpenOptions{Source: f.Weights(b), Device: dev})
		require.NoError(b, err)
		var c iqatest.Case
		for _, cc := range f.Cases {
			if cc.Metric == name {
				c = cc
				break
			}
		}
		var modes map[string][2]*torch.Tensor
		if s.FullReference() {
			img := iqatest.Repeat(b, images[c.Dist], batch, dev)
			modes = map[string][2]*torch.Tensor{
				"pairs": {img, iqatest.Repeat(b, images[c.Ref], batch, dev)},
				"group": {img, iqatest.Expand(b, images[c.Ref], batch, dev)},
			}
		} else {
			modes = map[string][2]*torch.Tensor{"nr": {iqatest.Repeat(b, images[c.Image], batch, dev), nil}}
		}
		for mode, in := range modes {
			b.Run(name+"/"+mode, func(b *testing.B) {
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
