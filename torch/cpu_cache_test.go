package torch_test

import (
	"os"
	"os/exec"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/dp2osr/dp2o/internal/testutil"
	"github.com/dp2osr/dp2o/torch"
)

// TestCPUCache checks that a freed block of 1 MiB or more is kept and
// handed out again for the same size, that its memory is whole (written and
// read back), and that EmptyCPUCache gives it back.
func TestCPUCache(t *testing.T) {
	if os.Getenv("DP2O_CPU_CACHE_MB") == "0" {
		require.False(t, torch.CPUCache().Enabled)
		return
	}
	testutil.NoLeak(t)
	require.True(t, torch.CPUCache().Enabled)
	shape := []int64{1 << 20} // 4 MiB of float32
	x := torch.Full(shape, 3, torch.Float32, torch.CPU)
	torch.Unscope(x)
	x.Close()
	st := torch.CPUCache()
	require.GreaterOrEqual(t, st.CachedBytes, int64(4<<20))
	y := torch.Unscope(torch.Full(shape, 5, torch.Float32, torch.CPU))
	after := torch.CPUCache()
	require.Equal(t, st.Hits+1, after.Hits, "the same size again comes from the cache")
	sum := y.Sum()
	require.Equal(t, float64(5*(1<<20)), sum.Item())
	sum.Close()
	y.Close()
	torch.EmptyCPUCache()
	require.Zero(t, torch.CPUCache().CachedBytes)
}

// TestCPUCacheOff runs TestCPUCache and TestOutOfMemory in a process
// started with DP2O_CPU_CACHE_MB=0: libtorch's own allocator then serves.
func TestCPUCacheOff(t *testing.T) {
	if os.Getenv("DP2O_CPU_CACHE_MB") == "0" {
		return // the child itself
	}
	cmd := exec.Command(os.Args[0], "-test.run", "^(TestCPUCache|TestOutOfMemory)$", "-test.v")
	cmd.Env = append(os.Environ(), "DP2O_CPU_CACHE_MB=0")
	out, err := cmd.CombinedOutput()
	require.NoError(t, err, "%s", out)
	require.Contains(t, string(out), "--- PASS: TestCPUCache")
	require.Contains(t, string(out), "--- PASS: TestOutOfMemory")
}
