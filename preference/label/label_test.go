package label

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/dp2osr/dp2o/imageio"
	"github.com/dp2osr/dp2o/internal/testutil"
	"github.com/dp2osr/dp2o/preference"
	"github.com/dp2osr/dp2o/preference/sample"
	"github.com/dp2osr/dp2o/reward"
	"github.com/dp2osr/dp2o/torch"
)

// fakeSampler makes deterministic candidates: the LR enlarged ×2 (nearest)
// with a seed-dependent perturbation, so candidates differ in quality.
type fakeSampler struct{}

func (fakeSampler) Name() string { return "sd2" }

func (fakeSampler) Candidates(_ context.Context, lr *imageio.RGB8, _ string, seeds []uint64) ([]*imageio.RGB8, error) {
	var out []*imageio.RGB8
	for _, s := range seeds {
		m := imageio.NewRGB8(2*lr.W, 2*lr.H)
		for y := 0; y < m.H; y++ {
			for x := 0; x < m.W; x++ {
				r, g, b := lr.At(x/2, y/2)
				d := uint8((uint64(x*7+y*13) * (s + 3)) % (4*s + 5))
				m.Set(x, y, r+d, g, b-d/2)
			}
		}
		out = append(out, m)
	}
	return out, nil
}

// candidateSet samples a small set (n inputs × m candidates) with the fake
// sampler into a fresh folder and returns it.
func candidateSet(t *testing.T, n, m int) string {
	t.Helper()
	root := t.TempDir()
	for _, d := range []string{"lr", "hr"} {
		require.NoError(t, os.MkdirAll(filepath.Join(root, "data", d), 0o755))
	}
	src, err := imageio.Load(filepath.Join("..", "..", "assets", "sample", "lr_house.png"))
	require.NoError(t, err)
	for i := 0; i < n; i++ {
		hr := imageio.NewRGB8(32, 32)
		for y := 0; y < 32; y++ {
			for x := 0; x < 32; x++ {
				r, g, b := src.At((2*x+11*i)%src.W, (2*y+5*i)%src.H)
				hr.Set(x, y, r, g, b)
			}
		}
		name := fmt.Sprintf("im%d.png", i)
		require.NoError(t, imageio.SavePNG(filepath.Join(root, "data", "hr", name), hr))
		require.NoError(t, imageio.SavePNG(filepath.Join(root, "data", "lr", name), imageio.Resize(hr, 16, 16, imageio.Bicubic)))
	}
	ins, err := sample.DataDirInputs(filepath.Join(root, "data"))
	require.NoError(t, err)
	dir := filepath.Join(root, "cands")
	cfg := sample.Config{Format: sample.Format, Settings: sample.Settings{Model: "sd2", Steps: 1}, Seeds: sample.SeedPool(0, m), BatchSize: 2}
	_, err = sample.Run(context.Background(), sample.Job{Dir: dir, Config: cfg, Inputs: ins,
		Open:   func() (sample.Sampler, error) { return fakeSampler{}, nil },
		Prompt: func(in sample.Input, _ *imageio.RGB8) (string, error) { return "p " + in.ID, nil }})
	require.NoError(t, err)
	_, err = sample.Merge(dir, ins)
	require.NoError(t, err)
	return dir
}

// meanNR is a no-reference test metric: the mean pixel value.
type meanNR struct{ calls *int }

func (meanNR) Name() string         { return "mean_nr" }
func (meanNR) FullReference() bool  { return false }
func (meanNR) HigherIsBetter() bool { return true }
func (meanNR) Close() error         { return nil }
func (s meanNR) Score(ctx context.Context, img, _ *torch.Tensor) ([]float64, error) {
	if err := reward.CheckInputs(ctx, s, img, nil); err != nil {
		return nil, err
	}
	if s.calls != nil {
		*s.calls++
	}
	var out []float64
	err := torch.Try(func() {
		sc := torch.NewScope()
		defer sc.Close()
		out = img.Reshape([]int64{img.Size(0), -1}).MeanDims([]int64{1}, false).To(torch.Float64).Float64s()
	})
	return out, err
}

func opener(calls *int) func(string) (reward.Scorer, error) {
	return func(name string) (reward.Scorer, error) {
		if name == "mean_nr" {
			return meanNR{calls}, nil
		}
		return reward.Open(name, reward.OpenOptions{})
	}
}

var metrics = []string{"psnr", "ssim", "mean_nr"}

func TestLabelsFromTheDefinition(t *testing.T) {
	testutil.NoLeak(t)
	dir := candidateSet(t, 3, 4)
	sum, err := Run(context.Background(), Job{Dir: dir, Metrics: metrics, Open: opener(nil), BatchSize: 3})
	require.NoError(t, err)
	require.Equal(t, 3*len(metrics), sum.Scored)
	l, err := Build(dir, metrics)
	require.NoError(t, err)
	require.NoError(t, l.Save(filepath.Join(dir, LabelsFile)))
	l2, err := Load(filepath.Join(dir, LabelsFile))
	require.NoError(t, err)
	require.Equal(t, l, l2)
	recs, err := sample.ReadManifest(dir)
	require.NoError(t, err)
	ids, groups := sample.Groups(recs)
	require.Len(t, l.Groups, len(ids))

	// Each raw score again, one image at a time, with the metric opened
	// afresh; each reward from SPEC §4's definition.
	for gi, g := range l.Groups {
		rs := groups[ids[gi]]
		require.Equal(t, ids[gi], g.ID)
		require.Len(t, g.Candidates, len(rs))
		for k, name := range metrics {
			s, err := opener(nil)(name)
			require.NoError(t, err)
			require.Equal(t, s.FullReference(), l.Metrics[k].Kind == "fr")
			require.Equal(t, s.HigherIsBetter(), l.Metrics[k].HigherIsBetter)
			for m, r := range rs {
				img, err := reward.LoadImage(filepath.Join(dir, r.File))
				require.NoError(t, err)
				ref, err := reward.LoadImage(r.HR)
				require.NoError(t, err)
				v, err := s.Score(context.Background(), img, ref)
				require.NoError(t, err)
				require.InDelta(t, v[0], g.Raw[m][k], 1e-9*math.Max(1, math.Abs(v[0])), "%s %s candidate %d", g.ID, name, m)
				img.Close()
				ref.Close()
			}
			s.Close()
		}
		want := definitionReward(g.Raw, l.Metrics)
		for m := range want {
			require.InDelta(t, want[m], g.Reward[m], 1e-12, "%s candidate %d reward", g.ID, m)
		}
	}
	// The file is what the pair step reads.
	pf, err := preference.BuildPairs(l.Groups, l.RewardMetrics(), 1)
	require.NoError(t, err)
	require.Len(t, pf.Pairs, len(l.Groups))
	var raw map[string]any
	b, err := os.ReadFile(filepath.Join(dir, LabelsFile))
	require.NoError(t, err)
	require.NoError(t, json.Unmarshal(b, &raw))
	require.Contains(t, raw, "metrics")
	require.Contains(t, raw, "groups")
}

// definitionReward: per metric, turn lower-is-better around, min-max over
// the group (all equal: 1/2); R = ½·mean(FR) + ½·mean(NR).
func definitionReward(raw [][]float64, ms []Metric) []float64 {
	M := len(raw)
	norm := make([][]float64, M)
	for m := range norm {
		norm[m] = make([]float64, len(ms))
	}
	for k, met := range ms {
		col := make([]float64, M)
		for m := range raw {
			col[m] = raw[m][k]
			if !met.HigherIsBetter {
				col[m] = -col[m]
			}
		}
		lo, hi := col[0], col[0]
		for _, v := range col {
			lo, hi = math.Min(lo, v), math.Max(hi, v)
		}
		for m, v := range col {
			if hi == lo {
				norm[m][k] = 0.5
			} else {
				norm[m][k] = (v - lo) / (hi - lo)
			}
		}
	}
	out := make([]float64, M)
	for m := range out {
		var fr, nr []float64
		for k, met := range ms {
			if met.Kind == "fr" {
				fr = append(fr, norm[m][k])
			} else {
				nr = append(nr, norm[m][k])
			}
		}
		mean := func(v []float64) float64 {
			s := 0.0
			for _, x := range v {
				s += x
			}
			return s / float64(len(v))
		}
		out[m] = 0.5*mean(fr) + 0.5*mean(nr)
	}
	return out
}

// cancelAfter wraps a scorer so that its n-th Score call cancels the run.
type cancelAfter struct {
	reward.Scorer
	n      *int
	cancel func()
}

func (c cancelAfter) Score(ctx context.Context, img, ref *torch.Tensor) ([]float64, error) {
	if *c.n--; *c.n == 0 {
		c.cancel()
	}
	return c.Scorer.Score(ctx, img, ref)
}

// scoredCopy copies candidate folder dir and scores the copy in one
// unsharded, uninterrupted run: the reference of the resume and shard tests.
func scoredCopy(t *testing.T, dir string) string {
	whole := filepath.Join(t.TempDir(), "copy")
	require.NoError(t, os.CopyFS(whole, os.DirFS(dir)))
	_, err := Run(context.Background(), Job{Dir: whole, Metrics: metrics, Open: opener(nil)})
	require.NoError(t, err)
	return whole
}

func TestResume(t *testing.T) {
	testutil.NoLeak(t)
	dir := candidateSet(t, 3, 4)
	whole := scoredCopy(t, dir)
	want, err := ReadScores(whole)
	require.NoError(t, err)

	ctx, cancel := context.WithCancel(context.Background())
	n := 4
	_, err = Run(ctx, Job{Dir: dir, Metrics: metrics, Open: func(name string) (reward.Scorer, error) {
		s, err := opener(nil)(name)
		return cancelAfter{s, &n, cancel}, err
	}})
	require.ErrorIs(t, err, context.Canceled)
	got, err := ReadScores(dir)
	require.NoError(t, err)
	require.NotEmpty(t, got)
	require.Less(t, len(got), len(want))
	// A killed writer's partial line is dropped.
	f, err := os.OpenFile(filepath.Join(dir, ScoresFile), os.O_APPEND|os.O_WRONLY, 0)
	require.NoError(t, err)
	_, err = f.WriteString(`{"input":"im2","metric":"ps`)
	require.NoError(t, err)
	require.NoError(t, f.Close())

	calls := 0
	sum, err := Run(context.Background(), Job{Dir: dir, Metrics: metrics, Open: opener(&calls)})
	require.NoError(t, err)
	require.Equal(t, len(got), sum.Existing)
	got, err = ReadScores(dir)
	require.NoError(t, err)
	require.Equal(t, want, got)

	// A finished run does nothing.
	sum, err = Run(context.Background(), Job{Dir: dir, Metrics: metrics, Open: func(string) (reward.Scorer, error) {
		t.Fatal("a finished run opened a metric")
		return nil, nil
	}})
	require.NoError(t, err)
	require.Zero(t, sum.Scored)
}

func TestBadInput(t *testing.T) {
	testutil.NoLeak(t)
	dir := candidateSet(t, 2, 2)
	_, err := Run(context.Background(), Job{Dir: dir, Metrics: []string{"no_such_metric"}})
	require.ErrorContains(t, err, `unknown metric "no_such_metric"`)
	_, err = Run(context.Background(), Job{Dir: dir, Metrics: []string{"psnr", "psnr"}})
	require.ErrorContains(t, err, "twice")
	_, err = Build(dir, []string{"psnr"})
	require.ErrorContains(t, err, "not scored yet")
	_, err = Run(context.Background(), Job{Dir: t.TempDir(), Metrics: []string{"psnr"}})
	require.ErrorContains(t, err, "run the sample step")

	recs, err := sample.ReadManifest(dir)
	require.NoError(t, err)

	// An HR of another size than the candidates.
	hr, err := imageio.Load(recs[0].HR)
	require.NoError(t, err)
	require.NoError(t, imageio.SavePNG(recs[0].HR, imageio.Resize(hr, hr.W+8, hr.H, imageio.Bicubic)))
	_, err = Run(context.Background(), Job{Dir: dir, Metrics: []string{"psnr"}})
	require.ErrorContains(t, err, "HR image")
	require.ErrorContains(t, err, "same size")
	require.NoError(t, imageio.SavePNG(recs[0].HR, hr))

	// A candidate file replaced after sampling.
	f := filepath.Join(dir, recs[1].File)
	orig, err := os.ReadFile(f)
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(f, []byte("garbage"), 0o644))
	_, err = Run(context.Background(), Job{Dir: dir, Metrics: []string{"psnr"}})
	require.ErrorContains(t, err, "not the file the manifest lists")

	// A corrupt image that the manifest vouches for (hash updated).
	sum, err := sample.FileSHA256(f)
	require.NoError(t, err)
	recs[1].SHA256 = sum
	var buf []byte
	for _, r := range recs {
		b, _ := json.Marshal(r)
		buf = append(append(buf, b...), '\n')
	}
	require.NoError(t, os.WriteFile(filepath.Join(dir, sample.ManifestFile), buf, 0o644))
	_, err = Run(context.Background(), Job{Dir: dir, Metrics: []string{"psnr"}})
	require.ErrorContains(t, err, recs[1].File)
	require.ErrorContains(t, err, "decode")
	require.NoError(t, os.WriteFile(f, orig, 0o644))
}

// TestShards: shards of a run (split as the sample step splits inputs) each
// score only their inputs into their own log; together they hold exactly
// the scores of one unsharded run, and Build over the folder gives the same
// labels.
func TestShards(t *testing.T) {
	testutil.NoLeak(t)
	dir := candidateSet(t, 5, 3)
	whole := scoredCopy(t, dir)
	want, err := Build(whole, metrics)
	require.NoError(t, err)

	const n = 2
	recs, err := sample.ReadManifest(dir)
	require.NoError(t, err)
	ids, _ := sample.Groups(recs)
	inputs := 0
	for i := range n {
		sum, err := Run(context.Background(), Job{Dir: dir, Metrics: metrics, Open: opener(nil), Shard: i, NumShards: n})
		require.NoError(t, err)
		mine := 0
		for _, id := range ids {
			if sample.ShardOf(id, n) == i {
				mine++
			}
		}
		require.Equal(t, mine, sum.Inputs, "shard %d scores its own inputs", i)
		require.Equal(t, mine*len(metrics), sum.Scored)
		inputs += sum.Inputs
		_, err = os.Stat(filepath.Join(dir, ShardScoresFile(i, n)))
		require.NoError(t, err, "shard %d logs to its own file", i)
	}
	require.Equal(t, len(ids), inputs)
	_, err = os.Stat(filepath.Join(dir, ScoresFile))
	require.ErrorIs(t, err, os.ErrNotExist, "no shard wrote the unsharded log")
	got, err := Build(dir, metrics)
	require.NoError(t, err)
	require.Equal(t, want, dropDir(whole, dir, got))

	// An unsharded run afterwards finds everything scored.
	sum, err := Run(context.Background(), Job{Dir: dir, Metrics: metrics, Open: func(string) (reward.Scorer, error) {
		t.Fatal("a finished sharded run opened a metric")
		return nil, nil
	}})
	require.NoError(t, err)
	require.Equal(t, len(ids)*len(metrics), sum.Existing)

	_, err = Run(context.Background(), Job{Dir: dir, Metrics: metrics, Open: opener(nil), Shard: 2, NumShards: 2})
	require.ErrorContains(t, err, "shard 2 of 2")
}

// dropDir returns got with the candidate folder dir in its paths replaced
// by want's folder wantDir, so labels built in two folders compare.
func dropDir(wantDir, dir string, got *Labels) *Labels {
	out := *got
	out.Groups = nil
	for _, g := range got.Groups {
		var cs []string
		for _, c := range g.Candidates {
			cs = append(cs, strings.Replace(c, abs(dir), abs(wantDir), 1))
		}
		g.Candidates = cs
		out.Groups = append(out.Groups, g)
	}
	return &out
}
