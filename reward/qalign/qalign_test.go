package qalign

import (
	"context"
	"fmt"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/dp2osr/dp2o/imageio"
	"github.com/dp2osr/dp2o/internal/testutil"
	"github.com/dp2osr/dp2o/reward"
	"github.com/dp2osr/dp2o/reward/internal/iqatest"
	"github.com/dp2osr/dp2o/torch"
)

func TestFixtureDescribesTheMetric(t *testing.T) {
	f := iqatest.Load(t, folder)
	require.Equal(t, "NR", f.Mode)
	require.False(t, f.LowerBetter)
	s := scorer(t, f)
	require.Equal(t, f.PyiqaName, s.Name())
	require.False(t, s.FullReference())
	require.True(t, s.HigherIsBetter())
	require.Contains(t, reward.Names(), f.PyiqaName)
	// The published preprocessing is the fixture's.
	require.Equal(t, fixtureProcessor(t, f), DefaultProcessor)
	var pre struct {
		Fill [3]uint8 `json:"expand2square_fill"`
	}
	f.Field(t, "preprocess", &pre)
	require.Equal(t, pre.Fill, DefaultProcessor.Fill())
	// The package's prompt and levels are the fixture's.
	tj := readTokens(t, f)
	require.Equal(t, tj.Prompt, QualityPrompt)
	require.Equal(t, tj.ImageToken, ImageToken)
	require.Equal(t, tj.ImageIndex, int64(ImageTokenID))
	require.Equal(t, tj.LevelWords, LevelWords)
	require.Equal(t, tj.LevelW, LevelWeights)
	// The sequence layout follows from the prompt and the config.
	var seq struct {
		TextTokens  int64 `json:"text_tokens"`
		Placeholder int64 `json:"image_placeholder_pos"`
		Visual      int64 `json:"visual_tokens"`
		SeqLen      int64 `json:"seq_len"`
	}
	f.Field(t, "sequence", &seq)
	cfg := fixtureConfig(t, f)
	require.Equal(t, seq.Visual, cfg.VisualTokens())
	require.Equal(t, seq.TextTokens, int64(len(tj.InputIDs)-1))
	require.Equal(t, tj.ImageIndex, tj.InputIDs[seq.Placeholder])
	require.Equal(t, seq.SeqLen, seq.TextTokens+seq.Visual)
}

// TestPreprocess checks every preprocessing step of every case: the uint8
// stages exactly, pixel_values at the README's tolerance.
func TestPreprocess(t *testing.T) {
	f := iqatest.Load(t, folder)
	exp := expected(t, f)
	images := f.Images(t)
	proc := fixtureProcessor(t, f)
	for _, c := range f.Cases {
		t.Run(c.Name, func(t *testing.T) {
			testutil.NoLeak(t)
			x, ci := input(t, c, images)
			u8, err := ToUint8(x)
			require.NoError(t, err)
			require.Len(t, u8, 1)
			m := u8[0]
			testutil.AssertEqual(t, c.Name+".input_u8", rgbTensor(t, m.Pix, m.H, m.W), exp.Tensors[c.Name+".input_u8"])
			sq := ExpandToSquare(m, proc.Fill())
			require.Equal(t, ci.SquareSide, sq.W)
			require.Equal(t, ci.PasteOffset, [2]int{(sq.W - m.W) / 2, (sq.H - m.H) / 2})
			testutil.AssertEqual(t, c.Name+".square_u8", rgbTensor(t, sq.Pix, sq.H, sq.W), exp.Tensors[c.Name+".square_u8"])
			r, err := proc.ResizeCrop(sq)
			require.NoError(t, err)
			testutil.AssertEqual(t, c.Name+".resized_u8", rgbTensor(t, r.Pix, r.H, r.W), exp.Tensors[c.Name+".resized_u8"])
			pv, err := proc.Normalize(u8[:0:0])
			require.Error(t, err)
			require.Nil(t, pv)
			pv, err = proc.Normalize([]*imageio.RGB8{r})
			require.NoError(t, err)
			defer pv.Close()
			exp.Check(t, c.Name+".pixel_values", pv)
			// The whole chain in one call.
			all, err := proc.Preprocess(x)
			require.NoError(t, err)
			defer all.Close()
			testutil.AssertEqual(t, c.Name+".pixel_values (chain)", all, pv)
		})
	}
}

// TestFixtures runs every case through the scorer and checks every stored
// stage in forward order (the first diverging stage fails the test).
func TestFixtures(t *testing.T) {
	f := iqatest.Load(t, folder)
	exp := expected(t, f)
	images := f.Images(t)
	s := scorer(t, f)
	dev := testutil.Device(t)
	for _, c := range f.Cases {
		t.Run(c.Name, func(t *testing.T) {
			testutil.NoLeak(t)
			x, _ := input(t, c, images)
			img := torch.Unscope(x.ToDevice(dev))
			defer img.Close()
			checked := map[string]bool{}
			got, err := s.ScoreTap(context.Background(), img, func(name string, y *torch.Tensor) {
				full := c.Name + "." + name
				if !exp.Has(full) || full == c.Score {
					return // the score: CheckScores below (stored as (1,1))
				}
				if y.DType() == torch.Int64 {
					testutil.AssertEqual(t, full, y.ToDevice(torch.CPU), exp.Tensors[full])
				} else {
					exp.Check(t, full, y)
				}
				checked[full] = true
			})
			require.NoError(t, err)
			exp.CheckScores(t, c.Score, got)
			checked[c.Score] = true
			for _, st := range []string{"input_u8", "square_u8", "resized_u8", "pixel_values"} {
				checked[c.Name+"."+st] = true // TestPreprocess
			}
			exp.RequireProduced(t, c.Name+".", checked)
		})
	}
}

// TestBatch scores the cases of one shape as one batch (with a repeat) and
// compares with the stored one-by-one scores.
func TestBatch(t *testing.T) {
	f := iqatest.Load(t, folder)
	exp := expected(t, f)
	images := f.Images(t)
	s := scorer(t, f)
	groups := map[string][]iqatest.Case{}
	var order []string
	for _, c := range f.Cases {
		k := fmt.Sprint(c.Shape)
		if _, ok := groups[k]; !ok {
			order = append(order, k)
		}
		groups[k] = append(groups[k], c)
	}
	batched := 0
	for _, k := range order {
		cs := groups[k]
		testutil.NoLeak(t)
		var xs []*torch.Tensor
		for _, c := range cs {
			x, _ := input(t, c, images)
			xs = append(xs, x)
		}
		xs = append(xs, xs[0]) // a repeat: batch ≥ 2 even for a single case
		img := torch.Unscope(torch.Scoped(func() *torch.Tensor { return torch.Cat(xs, 0).ToDevice(testutil.Device(t)) }))
		got, err := s.Score(context.Background(), img, nil)
		img.Close()
		require.NoError(t, err)
		require.Len(t, got, len(xs))
		for i, c := range cs {
			exp.CheckScores(t, c.Score, got[i:i+1])
		}
		exp.CheckScores(t, cs[0].Score, got[len(cs):])
		batched += len(xs)
	}
	require.Greater(t, batched, len(f.Cases))
}
