package maniqa

import (
	"math"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/dp2osr/dp2o/internal/testutil"
	"github.com/dp2osr/dp2o/reward/internal/iqatest"
	"github.com/dp2osr/dp2o/torch"
	"github.com/dp2osr/dp2o/torch/nn"
	"github.com/dp2osr/dp2o/vision/vit"
)

// tinyConfig is MANIQA's structure at a size where a forward of every
// crop costs milliseconds: 5 crops of 32² on a 4×4 patch grid, a shifted
// Swin window, the features of two of three ViT blocks.
var tinyConfig = Config{
	EmbedDim: 16, Patch: 8, ImgSize: 32, NumTab: 2, Depths: []int{2}, NumHeads: []int64{2}, Window: 2,
	DimMLP: 24, Scale: 0.8, TestSample: 5, ViTBlocks: []int{1, 2},
	Mean: [3]float64{0.5, 0.5, 0.5}, Std: [3]float64{0.5, 0.5, 0.5}, NumOutputs: 1,
	ViTConfig: vit.Config{ImgSize: 32, Patch: 8, Dim: 16, Heads: 2, Depth: 3, MLPHidden: 32, NumClasses: 3, Eps: 1e-6},
}

// TestCropsPerPass checks that scoring the crops a few at a time (the
// default path of Forward) gives the scores of the whole batch at once,
// with passes that split an image's crops and one that is shorter, and
// leaks nothing. Random weights at a small size: the arithmetic of a pass
// does not depend on the weights' values.
func TestCropsPerPass(t *testing.T) {
	testutil.NoLeak(t)
	dev := testutil.Device(t)
	b := nn.NewBuilder(nil, torch.Float32, dev)
	m, err := New(b, tinyConfig)
	require.NoError(t, err)
	defer m.Close()
	p := b.Params()
	defer p.Close()
	gen, err := torch.NewGenerator(dev, 7)
	require.NoError(t, err)
	for _, name := range p.Names {
		w := p.Tensors[name]
		if w.Closed() || strings.HasSuffix(name, "relative_position_index") || strings.HasSuffix(name, "attn_mask") {
			continue // the freed ViT head; constants the model computes itself
		}
		testutil.RandomInit(w, gen)
	}
	sc := torch.NewScope()
	defer sc.Close()
	// Three images, one small enough to be upscaled.
	x := torch.Rand([]int64{3, 3, 40, 56}, gen, torch.Float32, dev)
	small := torch.Rand([]int64{1, 3, 30, 36}, gen, torch.Float32, dev)
	for _, img := range []*torch.Tensor{x, small} {
		var whole *torch.Tensor
		var tapped int
		torch.NoGrad(func() {
			whole = m.Forward(img, func(string, *torch.Tensor) { tapped++ })
		})
		require.Positive(t, tapped)
		require.Equal(t, []int64{img.Size(0), 1}, whole.Shape())
		// Scores that tell the images apart, so that a pass reading the
		// wrong crops shows.
		scores := whole.Float64s()
		for i, v := range scores {
			require.NotZero(t, v)
			for _, w := range scores[:i] {
				require.Greater(t, math.Abs(v-w), 1e-3*math.Abs(w), "images %v score alike", scores)
			}
		}
		n := int(img.Size(0) * tinyConfig.TestSample)
		for _, per := range []int{0, 1, 2, 5, n - 1, n, n + 1} {
			m.CropsPerPass = per
			var got *torch.Tensor
			torch.NoGrad(func() { got = m.Forward(img, nil) })
			// Passes of other sizes may take other BLAS blockings: the
			// scores' tolerance, not bit equality.
			testutil.AssertClose(t, "score", got, whole, iqatest.ScoreAbsTol, iqatest.RelTol)
		}
	}
}
