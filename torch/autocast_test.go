package torch_test

import (
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/dp2osr/dp2o/internal/testutil"
	"github.com/dp2osr/dp2o/torch"
)

// TestAutocast checks torch.autocast semantics on the CPU (bfloat16): a
// matmul of float32 inputs runs in the autocast dtype inside the region and
// in float32 outside; nested regions restore the outer state.
func TestAutocast(t *testing.T) {
	testutil.NoLeak(t)
	s := torch.NewScope()
	defer s.Close()
	a := torch.Ones([]int64{4, 4}, torch.Float32, torch.CPU)
	require.False(t, torch.AutocastEnabled(torch.DeviceCPU))
	torch.Autocast(torch.DeviceCPU, torch.BFloat16, func() {
		require.True(t, torch.AutocastEnabled(torch.DeviceCPU))
		require.Equal(t, torch.BFloat16, a.Matmul(a).DType())
		torch.Autocast(torch.DeviceCPU, torch.BFloat16, func() {
			require.Equal(t, torch.BFloat16, a.Matmul(a).DType())
		})
		require.True(t, torch.AutocastEnabled(torch.DeviceCPU), "inner region restored the outer state")
		// Ops outside the lower-precision list keep their dtype.
		require.Equal(t, torch.Float32, a.Add(a).DType())
	})
	require.False(t, torch.AutocastEnabled(torch.DeviceCPU))
	require.Equal(t, torch.Float32, a.Matmul(a).DType())

	if testutil.Device(t).IsCUDA() {
		c := a.ToDevice(torch.CUDA(0))
		torch.Autocast(torch.DeviceCUDA, torch.Float16, func() {
			require.Equal(t, torch.Float16, c.Matmul(c).DType())
		})
		require.Equal(t, torch.Float32, c.Matmul(c).DType())
	}
}
