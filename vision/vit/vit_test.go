package vit

import (
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/dp2osr/dp2o/internal/testutil"
	"github.com/dp2osr/dp2o/torch"
	"github.com/dp2osr/dp2o/torch/nn"
)

// tiny is a ViT small enough for a test: 4 blocks on a 4×4 patch grid.
var tiny = Config{ImgSize: 32, Patch: 8, Dim: 16, Heads: 2, Depth: 4, MLPHidden: 32, NumClasses: 3, Eps: 1e-6}

// TestFeatures checks that Features gives the outputs of the blocks asked
// for, in the order asked, equal to Blocks' (the same ops on the same
// inputs; a tolerance all the same, for BLAS builds that split work by
// thread), that it frees the others, and that an index out of range is an
// error.
func TestFeatures(t *testing.T) {
	testutil.NoLeak(t)
	dev := testutil.Device(t)
	b := nn.NewBuilder(nil, torch.Float32, dev)
	v, err := New(b, tiny)
	require.NoError(t, err)
	p, err := b.Finish()
	require.NoError(t, err)
	defer p.Close()
	gen, err := torch.NewGenerator(dev, 3)
	require.NoError(t, err)
	for _, w := range p.List() {
		testutil.RandomInit(w, gen)
	}
	sc := torch.NewScope()
	defer sc.Close()
	x := torch.Randn([]int64{2, 3, tiny.ImgSize, tiny.ImgSize}, gen, torch.Float32, dev)
	var all, some []*torch.Tensor
	torch.NoGrad(func() {
		all = v.Blocks(x, tiny.Depth, nil)
		require.Len(t, all, tiny.Depth)
		require.Empty(t, v.Blocks(x, -1, nil))
		live := torch.LiveTensors()
		some = v.Features(x, []int{3, 1}, nil)
		// Only the two outputs asked for are left.
		require.Equal(t, live+2, torch.LiveTensors())
	})
	require.Len(t, some, 2)
	testutil.AssertClose(t, "block 3", some[0], all[3], 0, 1e-6)
	testutil.AssertClose(t, "block 1", some[1], all[1], 0, 1e-6)
	err = torch.Try(func() { v.Features(x, []int{tiny.Depth}, nil) })
	require.ErrorContains(t, err, "block")
}
