package transformer

import (
	"math"
	"testing"

	"github.com/dp2osr/dp2o/internal/testutil"
	"github.com/dp2osr/dp2o/torch"
)

// TestAttendInPiecesIgnoresStaleMemory computes attention in pieces of one
// query row, with a geometry (small products) for which libtorch 1.13's
// baddbmm with beta 0 reads its uninitialised output (0·NaN), after
// leaving NaN in freed blocks of the scores' size: the scores must not
// depend on what the allocator hands back.
func TestAttendInPiecesIgnoresStaleMemory(t *testing.T) {
	testutil.NoLeak(t)
	s := torch.NewScope()
	defer s.Close()
	const l, sl, d = 15, 22, 12
	gen := torch.MustGenerator(torch.CPU, 7)
	q := torch.Randn([]int64{2, 1, l, d}, gen, torch.Float32, torch.CPU)
	k := torch.Randn([]int64{2, 1, sl, d}, gen, torch.Float32, torch.CPU)
	v := torch.Randn([]int64{2, 1, sl, d}, gen, torch.Float32, torch.CPU)
	a := &attention{heads: 1, headDim: d, math: true}
	whole := a.attend(q, k, v)

	withTinyChunks(t)
	for range 20 {
		stale := torch.Full([]int64{2, 1, sl}, math.NaN(), torch.Float32, torch.CPU)
		stale.Close()
		pieces := a.attend(q, k, v)
		testutil.AssertClose(t, "attention in pieces", pieces, whole, 1e-6, 0)
		pieces.Close()
	}
}
