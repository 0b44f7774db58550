package eval

import (
	"bytes"
	"context"
	"fmt"
	"image/png"
	"math"
	"math/rand"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/dp2osr/dp2o/imageio"
	"github.com/dp2osr/dp2o/internal/testutil"
	"github.com/dp2osr/dp2o/preference"
	"github.com/dp2osr/dp2o/preference/label"
	"github.com/dp2osr/dp2o/reward"
	"github.com/dp2osr/dp2o/torch"
)

func randomRewards(rng *rand.Rand, n, k int) [][]float64 {
	r := make([][]float64, n)
	for i := range r {
		r[i] = make([]float64, k)
		for j := range r[i] {
			r[i][j] = rng.Float64()
		}
		r[i][rng.Intn(k)] = r[i][rng.Intn(k)] // a tie now and then
	}
	return r
}

// TestCurvesFromTheDefinition checks both estimators against the
// definitions, computed here by brute force: every M-subset of an image's
// samples (Subsets) and the first M samples (Prefix).
func TestCurvesFromTheDefinition(t *testing.T) {
	rng := rand.New(rand.NewSource(1))
	const n, K = 3, 9
	rewards := randomRewards(rng, n, K)
	sub, err := Curves(rewards, K, Subsets)
	require.NoError(t, err)
	pre, err := Curves(rewards, K, Prefix)
	require.NoError(t, err)
	require.Len(t, sub, K)
	for M := 1; M <= K; M++ {
		var best, mean, worst float64
		for _, r := range rewards {
			var b, me, w float64
			count := 0
			for mask := 0; mask < 1<<K; mask++ {
				if popcount(mask) != M {
					continue
				}
				hi, lo, s := math.Inf(-1), math.Inf(1), 0.0
				for j := 0; j < K; j++ {
					if mask&(1<<j) != 0 {
						hi, lo, s = math.Max(hi, r[j]), math.Min(lo, r[j]), s+r[j]
					}
				}
				b, w, me = b+hi, w+lo, me+s/float64(M)
				count++
			}
			best += b / float64(count) / n
			worst += w / float64(count) / n
			mean += me / float64(count) / n
		}
		p := sub[M-1]
		require.Equal(t, M, p.M)
		require.InDelta(t, best, p.Best, 1e-12, "Best@%d", M)
		require.InDelta(t, mean, p.Mean, 1e-12, "Mean@%d", M)
		require.InDelta(t, worst, p.Worst, 1e-12, "Worst@%d", M)

		best, mean, worst = 0, 0, 0
		for _, r := range rewards {
			hi, lo, s := r[0], r[0], 0.0
			for _, v := range r[:M] {
				hi, lo, s = math.Max(hi, v), math.Min(lo, v), s+v
			}
			best, worst, mean = best+hi/n, worst+lo/n, mean+s/float64(M)/n
		}
		q := pre[M-1]
		require.InDelta(t, best, q.Best, 1e-12, "prefix Best@%d", M)
		require.InDelta(t, mean, q.Mean, 1e-12, "prefix Mean@%d", M)
		require.InDelta(t, worst, q.Worst, 1e-12, "prefix Worst@%d", M)
	}
}

func popcount(x int) int {
	c := 0
	for ; x != 0; x &= x - 1 {
		c++
	}
	return c
}

func TestCurvesBadInput(t *testing.T) {
	_, err := Curves(nil, 4, Subsets)
	require.ErrorContains(t, err, "no test images")
	_, err = Curves([][]float64{{1, 2}}, 4, Subsets)
	require.ErrorContains(t, err, "fewer than M = 4")
	_, err = Curves([][]float64{{1, math.NaN()}}, 2, Prefix)
	require.ErrorContains(t, err, "NaN")
	_, err = Curves([][]float64{{1}}, 1, "median")
	require.ErrorContains(t, err, "estimator")
}

func labels(rng *rand.Rand, nImg, K int, metrics []label.Metric) *label.Labels {
	l := &label.Labels{Format: label.LabelsFormat, Metrics: metrics}
	for i := 0; i < nImg; i++ {
		g := preference.Group{ID: fmt.Sprint(i)}
		for k := 0; k < K; k++ {
			row := make([]float64, len(metrics))
			for j := range row {
				row[j] = 10 * rng.Float64()
			}
			g.Raw = append(g.Raw, row)
		}
		l.Groups = append(l.Groups, g)
	}
	return l
}

func TestPoolRewards(t *testing.T) {
	rng := rand.New(rand.NewSource(2))
	ms := []label.Metric{{Name: "a", Kind: "fr", HigherIsBetter: false}, {Name: "b", Kind: "fr", HigherIsBetter: true}, {Name: "c", Kind: "nr", HigherIsBetter: true}}
	sets := []*label.Labels{labels(rng, 3, 4, ms), labels(rng, 2, 4, ms)}
	got, err := PoolRewards(sets, Bounds{"c": {0, 20}})
	require.NoError(t, err)
	// The definition: per metric, range over every sample of both sets
	// (metric c: the given bounds), lower-is-better turned around.
	lo, hi := []float64{math.Inf(1), math.Inf(1), 0}, []float64{math.Inf(-1), math.Inf(-1), 20}
	for _, l := range sets {
		for _, g := range l.Groups {
			for _, row := range g.Raw {
				for j := 0; j < 2; j++ {
					lo[j], hi[j] = math.Min(lo[j], row[j]), math.Max(hi[j], row[j])
				}
			}
		}
	}
	for s, l := range sets {
		for i, g := range l.Groups {
			for k, row := range g.Raw {
				a := (hi[0] - row[0]) / (hi[0] - lo[0])
				b := (row[1] - lo[1]) / (hi[1] - lo[1])
				c := (row[2] - lo[2]) / (hi[2] - lo[2])
				want := 0.5*(a+b)/2 + 0.5*c
				require.InDelta(t, want, got[s][i][k], 1e-12)
			}
		}
	}
	other := []label.Metric{ms[0], ms[2], ms[1]}
	_, err = PoolRewards([]*label.Labels{sets[0], labels(rng, 1, 4, other)}, nil)
	require.ErrorContains(t, err, "same metrics")
	_, err = PoolRewards(sets, Bounds{"zz": {0, 1}})
	require.ErrorContains(t, err, "zz")
}

func TestOutputs(t *testing.T) {
	rng := rand.New(rand.NewSource(3))
	var curves []Curve
	for _, name := range []string{"C-SD2", "DP²O-SD2"} {
		pts, err := Curves(randomRewards(rng, 4, 16), 16, Subsets)
		require.NoError(t, err)
		curves = append(curves, Curve{Name: name, Points: pts})
	}
	var buf bytes.Buffer
	require.NoError(t, WriteCurvesCSV(&buf, curves))
	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	require.Len(t, lines, 1+2*16)
	require.Equal(t, "model,M,best,mean,worst", lines[0])
	path := filepath.Join(t.TempDir(), "curves.png")
	require.NoError(t, PlotCurves(path, "Best@M", curves))
	f, err := os.Open(path)
	require.NoError(t, err)
	defer f.Close()
	cfg, err := png.DecodeConfig(f)
	require.NoError(t, err)
	require.Positive(t, cfg.Width)
	require.ErrorContains(t, PlotCurves(path, "", nil), "nothing to plot")
}

func TestTable(t *testing.T) {
	testutil.NoLeak(t)
	root := t.TempDir()
	src, err := imageio.Load(filepath.Join("..", "..", "assets", "sample", "lr_house.png"))
	require.NoError(t, err)
	hrDir, a, b := filepath.Join(root, "hr"), filepath.Join(root, "a"), filepath.Join(root, "b")
	for _, d := range []string{hrDir, a, b} {
		require.NoError(t, os.MkdirAll(d, 0o755))
	}
	for i := 0; i < 3; i++ {
		hr := imageio.Resize(src, 48+8*i, 48, imageio.Bicubic)
		name := fmt.Sprintf("x%d.png", i)
		require.NoError(t, imageio.SavePNG(filepath.Join(hrDir, name), hr))
		require.NoError(t, imageio.SavePNG(filepath.Join(a, name), imageio.Resize(imageio.Resize(hr, hr.W/2, hr.H/2, imageio.Bicubic), hr.W, hr.H, imageio.Bicubic)))
		require.NoError(t, imageio.SavePNG(filepath.Join(b, name), imageio.Resize(imageio.Resize(hr, hr.W/4, hr.H/4, imageio.Box), hr.W, hr.H, imageio.Nearest)))
	}
	var scorers []reward.Scorer
	for _, n := range []string{"psnr", "ssim"} {
		s, err := reward.Open(n, reward.OpenOptions{})
		require.NoError(t, err)
		defer s.Close()
		scorers = append(scorers, s)
	}
	tab, err := ScoreFolders(context.Background(), []Folder{{"bicubic", a}, {"nearest", b}}, hrDir, scorers, torch.CPU, nil)
	require.NoError(t, err)
	// Each mean again from one-image scores.
	for f, dir := range []string{a, b} {
		for k, s := range scorers {
			want := 0.0
			for i := 0; i < 3; i++ {
				name := fmt.Sprintf("x%d.png", i)
				img, err := reward.LoadImage(filepath.Join(dir, name))
				require.NoError(t, err)
				ref, err := reward.LoadImage(filepath.Join(hrDir, name))
				require.NoError(t, err)
				v, err := s.Score(context.Background(), img, ref)
				require.NoError(t, err)
				want += v[0] / 3
				img.Close()
				ref.Close()
			}
			got, _, n := tab.Summary(f, k)
			require.Equal(t, 3, n)
			require.InDelta(t, want, got, 1e-9*math.Max(1, math.Abs(want)))
		}
	}
	var md, csv bytes.Buffer
	require.NoError(t, tab.WriteMarkdown(&md))
	require.NoError(t, tab.WriteCSV(&csv))
	require.Contains(t, md.String(), "| Metric | bicubic | nearest |")
	require.Contains(t, md.String(), "| PSNR↑ |")
	require.Len(t, strings.Split(strings.TrimSpace(csv.String()), "\n"), 1+2*2+2*3*2)

	// Bad input: HR of another size, a corrupt output, an output without HR.
	hr0 := filepath.Join(hrDir, "x0.png")
	orig, err := os.ReadFile(hr0)
	require.NoError(t, err)
	require.NoError(t, imageio.SavePNG(hr0, imageio.Resize(src, 40, 40, imageio.Bicubic)))
	_, err = ScoreFolders(context.Background(), []Folder{{"a", a}}, hrDir, scorers, torch.CPU, nil)
	require.ErrorContains(t, err, "same size")
	require.NoError(t, os.WriteFile(hr0, orig, 0o644))
	require.NoError(t, os.WriteFile(filepath.Join(b, "x1.png"), []byte("\x89PNG\r\n\x1a\nbroken"), 0o644))
	_, err = ScoreFolders(context.Background(), []Folder{{"b", b}}, hrDir, scorers, torch.CPU, nil)
	require.ErrorContains(t, err, "x1.png")
	require.NoError(t, imageio.SavePNG(filepath.Join(b, "extra.png"), src))
	_, err = ScoreFolders(context.Background(), []Folder{{"b", b}}, hrDir, scorers, torch.CPU, nil)
	require.ErrorContains(t, err, "without an HR")
}
