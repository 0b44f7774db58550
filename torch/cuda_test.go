package torch_test

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/dp2osr/dp2o/internal/testutil"
	"github.com/dp2osr/dp2o/torch"
)

// hasNvidiaGPU reports whether the machine has an NVIDIA GPU the driver
// exposes, independently of libtorch.
func hasNvidiaGPU() bool {
	m, _ := filepath.Glob("/dev/nvidia[0-9]*")
	return len(m) > 0
}

// TestCUDALinked fails when the machine has a GPU but the shim was built
// without torch_cuda (or the linker dropped it): CUDA must not silently
// disappear. On a machine without a GPU it checks the error path instead.
func TestCUDALinked(t *testing.T) {
	if !hasNvidiaGPU() && os.Getenv("DP2O_DEVICE") != "cuda" {
		require.False(t, torch.CUDAAvailable())
		_, _, _, err := torch.CUDAMemory(0)
		require.Error(t, err)
		return
	}
	require.True(t, torch.CUDAAvailable(), "an NVIDIA GPU is present but libtorch sees no CUDA: was the shim built against a CUDA libtorch (LIBTORCH=...)?")
	require.Positive(t, torch.CUDADeviceCount())
	testutil.NoLeak(t)
	s := torch.NewScope()
	defer s.Close()
	dev := torch.CUDA(0)
	a := torch.Ones([]int64{256, 256}, torch.Float16, dev)
	require.Equal(t, dev, a.Device())
	require.NoError(t, torch.CUDASynchronize(0))
	alloc, peak, _, err := torch.CUDAMemory(0)
	require.NoError(t, err)
	require.Positive(t, alloc)
	require.GreaterOrEqual(t, peak, alloc)
	name, err := torch.CUDADeviceName(0)
	require.NoError(t, err)
	t.Logf("CUDA device 0: %s, %d bytes allocated", name, alloc)
}
