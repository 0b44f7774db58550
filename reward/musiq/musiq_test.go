package musiq

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
)

const folder = "iqa/musiq"

type preprocess struct {
	PatchSize                int64   `json:"patch_size"`
	PatchStride              int64   `json:"patch_stride"`
	HseGridSize              int64   `json:"hse_grid_size"`
	LongerSideLengths        []int64 `json:"longer_side_lengths"`
	MaxSeqLenFromOriginalRes *int64  `json:"max_seq_len_from_original_res"`
}

type musiqCase struct {
	SeqLen int64 `json:"seq_len"`
	Scales []struct {
		ScaleID    int      `json:"scale_id"`
		LongerSide *int64   `json:"longer_side"`
		ResizedHW  [2]int64 `json:"resized_hw"`
		GridHW     [2]int64 `json:"grid_hw"`
		Valid      int64    `json:"valid_tokens"`
		PaddedTo   *int64   `json:"padded_to"`
	} `json:"scales"`
}

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

func TestConfigMatchesFixture(t *testing.T) {
	f := iqatest.Load(t, folder)
	var p preprocess
	f.Field(t, "preprocess", &p)
	require.Equal(t, p.PatchSize, KonIQ.PatchSize)
	require.Equal(t, p.PatchStride, KonIQ.PatchStride)
	require.Equal(t, p.HseGridSize, KonIQ.HashGridSize)
	require.Equal(t, p.LongerSideLengths, KonIQ.LongerSideLengths)
	require.Equal(t, p.MaxSeqLenFromOriginalRes != nil, KonIQ.UseOriginalRes)
	if p.MaxSeqLenFromOriginalRes != nil {
		require.Equal(t, *p.MaxSeqLenFromOriginalRes, KonIQ.MaxSeqLenFromOriginalRes)
	}
	require.Equal(t, "NR", f.Mode)
	require.False(t, f.LowerBetter)
}

// TestLayout checks the multi-scale token layout (resize rounding, grids,
// padding) of every case.
func TestLayout(t *testing.T) {
	f := iqatest.Load(t, folder)
	for _, c := range f.Cases {
		var mc musiqCase
		require.NoError(t, json.Unmarshal(c.Raw, &mc))
		got := KonIQ.Layout(c.Shape[2], c.Shape[3])
		require.Len(t, got, len(mc.Scales), c.Name)
		for i, s := range mc.Scales {
			require.Equal(t, s.ScaleID, got[i].ScaleID, c.Name)
			require.Equal(t, s.ResizedHW, got[i].ResizedHW, "%s scale %d resized size", c.Name, i)
			require.Equal(t, s.GridHW, got[i].GridHW, "%s scale %d grid", c.Name, i)
			require.Equal(t, s.Valid, got[i].Valid, "%s scale %d", c.Name, i)
			want := int64(-1)
			if s.PaddedTo != nil {
				want = *s.PaddedTo
			}
			require.Equal(t, want, got[i].PaddedTo, "%s scale %d", c.Name, i)
		}
		require.Equal(t, mc.SeqLen, KonIQ.SeqLen(c.Shape[2], c.Shape[3]), c.Name)
	}
}

func TestFixtures(t *testing.T) {
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
				full := c.Name + "." + name
				if !exp.Has(full) {
					return
				}
				if name == "tokens_meta" { // copies of integers: exact
					testutil.AssertEqual(t, full, x.ToDevice(torch.CPU).Contiguous(), exp.Tensors[full])
				} else {
					exp.Check(t, full, x)
				}
				checked[full] = true
			})
			require.NoError(t, err)
			exp.CheckScores(t, c.Score, got)
			checked[c.Score] = true
			exp.RequireProduced(t, c.Name+".", checked)

			// Without a tap the padding tokens are dropped: the kept ones
			// are exactly those with mask 1 in pyiqa's sequence, and the
			// score is the same.
			if meta, ok := exp.Tensors[c.Name+".tokens_meta"]; ok {
				rows := meta.Float32s()
				var want []int64
				for i := 0; i < len(rows)/3; i++ {
					if rows[3*i+2] == 1 {
						want = append(want, int64(i))
					}
				}
				require.Equal(t, want, KonIQ.validTokens(c.Shape[2], c.Shape[3]), "non-padding tokens")
			}
			got, err = s.Score(context.Background(), img, nil)
			require.NoError(t, err)
			exp.CheckScores(t, c.Score, got)
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

// TestPublishedCheckpoint writes the weights as the published checkpoint (a
// bare state dict with DataParallel's "module." prefix, under the published
// name) and opens the metric by name from its directory and from the file.
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
	path := filepath.Join(dir, file)
	iqatest.WritePth(t, path, "", f.Weights(t), func(k string) string { return "module." + k })
	img := torch.Unscope(f.Images(t)[f.Cases[0].Image].ToDevice(testutil.Device(t)))
	defer img.Close()
	want, err := base.Score(context.Background(), img, nil)
	require.NoError(t, err)
	for _, w := range []string{dir, path} {
		s, err := reward.Open("musiq", reward.OpenOptions{Weights: w, Device: testutil.Device(t)})
		require.NoError(t, err)
		got, err := s.Score(context.Background(), img, nil)
		require.NoError(t, err)
		require.Equal(t, want, got)
		require.NoError(t, s.Close())
	}
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
	iqatest.CheckNRInputErrors(t, s)
	ctx := context.Background()
	var err error
	// Tiny and very elongated images still give a sequence.
	for _, hw := range [][2]int64{{1, 1}, {5, 300}} {
		got, err := s.Score(ctx, mk(2, 3, hw[0], hw[1]), nil)
		require.NoError(t, err, "%v", hw)
		require.Len(t, got, 2)
	}

	dir := t.TempDir()
	// A checkpoint of another layout: pyiqa's {'params': …} nesting.
	nested := filepath.Join(dir, "nested.pth")
	src := f.Weights(t)
	iqatest.WritePth(t, nested, "params", src, nil)
	_, err = Open(reward.OpenOptions{Weights: nested})
	require.ErrorContains(t, err, "not a dict of tensors")
	// Another metric's state dict (keys missing).
	partial := filepath.Join(dir, "partial.pth")
	iqatest.WritePth(t, partial, "", map[string]*torch.Tensor{"conv_root.weight": src["conv_root.weight"], "extra.weight": src["head.weight"]}, nil)
	_, err = Open(reward.OpenOptions{Weights: partial})
	require.ErrorContains(t, err, "missing keys")
	require.ErrorContains(t, err, "unexpected keys: extra.weight")
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
