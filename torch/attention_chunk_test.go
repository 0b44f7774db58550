package torch_test

import (
	"fmt"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/dp2osr/dp2o/internal/testutil"
	"github.com/dp2osr/dp2o/torch"
)

// TestAttentionChunkedMatchesWhole: the blocked math order (small bounds,
// so that blocks of a few rows, whole heads, and the whole product are all
// taken) gives the whole product's values for float32 and float64, with
// leading batch dims (bfloat16 is never blocked: the same bits); with
// autograd recording it is not taken (the graph is the whole product's).
func TestAttentionChunkedMatchesWhole(t *testing.T) {
	testutil.NoLeak(t)
	defer torch.SetAttentionChunkBytes(torch.SetAttentionChunkBytes(0))
	gen, err := torch.NewGenerator(torch.CPU, 3)
	require.NoError(t, err)
	s := torch.NewScope()
	defer s.Close()
	q := torch.Randn([]int64{2, 3, 37, 16}, gen, torch.Float32, torch.CPU)
	k := torch.Randn([]int64{2, 3, 29, 16}, gen, torch.Float32, torch.CPU)
	v := torch.Randn([]int64{2, 3, 29, 8}, gen, torch.Float32, torch.CPU)
	for _, dt := range []torch.DType{torch.Float32, torch.Float64, torch.BFloat16} {
		q, k, v := q.To(dt), k.To(dt), v.To(dt)
		torch.SetAttentionChunkBytes(0)
		var want *torch.Tensor
		torch.NoGrad(func() { want = torch.ScaledDotProductAttention(q, k, v, torch.AttentionOpts{Math: true}) })
		// 1 row, 5 rows, a whole head, everything in one block.
		for _, bound := range []int64{1, 5 * 29 * 4, 37 * 29 * 4, 1 << 30} {
			torch.SetAttentionChunkBytes(bound)
			var got *torch.Tensor
			torch.NoGrad(func() { got = torch.ScaledDotProductAttention(q, k, v, torch.AttentionOpts{Math: true}) })
			require.Equal(t, want.Shape(), got.Shape())
			name := fmt.Sprintf("%v bound %d", dt, bound)
			if dt == torch.BFloat16 {
				testutil.AssertEqual(t, name, got, want)
				continue
			}
			testutil.AssertClose(t, name, got.To(torch.Float64), want.To(torch.Float64), 1e-6, 1e-5)
		}
	}
	// Under autograd the whole product runs: gradients reach q, k and v.
	torch.SetAttentionChunkBytes(1)
	qg, kg, vg := q.Clone().SetRequiresGrad(true), k.Clone().SetRequiresGrad(true), v.Clone().SetRequiresGrad(true)
	torch.EnableGrad(func() {
		torch.ScaledDotProductAttention(qg, kg, vg, torch.AttentionOpts{Math: true}).Sum().Backward(nil)
	})
	for _, x := range []*torch.Tensor{qg, kg, vg} {
		g := x.Grad()
		require.NotNil(t, g)
		g.Close()
	}
}
