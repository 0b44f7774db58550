package qalign

import (
	"fmt"
	"math"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/dp2osr/dp2o/internal/testutil"
	"github.com/dp2osr/dp2o/torch"
)

// TestAttentionSlices checks the CPU attention that runs in slices of
// images and heads against the one batched product, for shapes that make
// it slice by images (several images' scores fit cpuScoreBytes) and by
// heads (one head's do not), with an exact and an inexact scale.
func TestAttentionSlices(t *testing.T) {
	testutil.NoLeak(t)
	const f32 = 4
	side := func(bytes int64) int64 { return int64(math.Sqrt(float64(bytes / f32))) }
	cases := []struct{ n, h, t, d int64 }{
		{5, 3, side(cpuScoreBytes / 8), 4},  // 8 score matrices fit: slices of 2 images, all heads
		{2, 2, side(cpuScoreBytes) + 64, 6}, // one does not: slices of 1 image, 1 head
	}
	gen, err := torch.NewGenerator(torch.CPU, 7)
	require.NoError(t, err)
	for _, c := range cases {
		t.Run(fmt.Sprintf("%dx%dx%dx%d", c.n, c.h, c.t, c.d), func(t *testing.T) {
			require.Greater(t, c.n*c.h*c.t*c.t*f32, int64(cpuScoreBytes), "the case must slice")
			s := torch.NewScope()
			defer s.Close()
			// (B,T,H,D) seen as (B,H,T,D): strided, as the model's q, k, v.
			x := func() *torch.Tensor {
				return torch.Randn([]int64{c.n, c.t, c.h, c.d}, gen, torch.Float32, torch.CPU).Permute([]int64{0, 2, 1, 3})
			}
			q, k, v := x(), x(), x()
			scale := math.Pow(float64(c.d), -0.5)
			got := attention(q, k, v, scale)
			want := attend(q, k, v, scale)
			require.Equal(t, want.Shape(), got.Shape())
			testutil.AssertClose(t, "sliced attention", got, want, 1e-6, 1e-5)
		})
	}
}
