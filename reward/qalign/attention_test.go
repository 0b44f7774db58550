package qalign

import (
	"fmt"
	"math"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/dp2osr/dp2o/internal/testutil"
	"github.com/dp2osr/dp2o/torch"
)

// TestAttentionSlices checks the CPU attention that runs in slices against
// the one batched product, with score budgets that make it take each path:
// whole, slices of several images (with a shorter last one), blocks of
// query rows (with a shorter last one), and one row at a time; with an
// exact and an inexact scale.
func TestAttentionSlices(t *testing.T) {
	testutil.NoLeak(t)
	saved := cpuScoreBytes
	t.Cleanup(func() { cpuScoreBytes = saved })
	const f32 = 4
	cases := []struct {
		name       string
		n, h, t, d int64
		rows       int64 // score rows of the budget
	}{
		{"whole", 2, 3, 40, 4, 2 * 3 * 40},
		{"images", 5, 3, 64, 4, 2 * 3 * 64},
		{"row blocks", 2, 3, 100, 6, 7 * 3},
		{"single rows", 2, 3, 30, 6, 2},
	}
	gen, err := torch.NewGenerator(torch.CPU, 7)
	require.NoError(t, err)
	for _, c := range cases {
		t.Run(fmt.Sprintf("%s %dx%dx%dx%d", c.name, c.n, c.h, c.t, c.d), func(t *testing.T) {
			cpuScoreBytes = c.rows * c.t * f32
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
