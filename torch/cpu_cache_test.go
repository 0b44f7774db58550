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
// read back), that a loop of the same allocations finds them all cached,
// that the memory held never passes the most handed out at once, and that
// EmptyCPUCache gives everything back.
func TestCPUCache(t *testing.T) {
	if os.Getenv("DP2O_CPU_CACHE_MB") == "0" {
		require.False(t, torch.CPUCache().Enabled)
		return
	}
	testutil.NoLeak(t)
	require.True(t, torch.CPUCache().Enabled)
	torch.EmptyCPUCache()                                    // nothing left by earlier tests
	mib := func(n int64) []int64 { return []int64{n << 18} } // n MiB of float32
	x := torch.Unscope(torch.Full(mib(4), 3, torch.Float32, torch.CPU))
	x.Close()
	st := torch.CPUCache()
	require.Equal(t, int64(4<<20), st.CachedBytes, "a power of two is its own size class")
	y := torch.Unscope(torch.Full(mib(4), 5, torch.Float32, torch.CPU))
	after := torch.CPUCache()
	require.Equal(t, st.Hits+1, after.Hits, "the same size again comes from the cache")
	require.Zero(t, after.CachedBytes)
	sum := y.Sum()
	require.Equal(t, float64(5*(1<<20)), sum.Item())
	sum.Close()
	y.Close()

	// A "forward" of tensors live at once, three times: the second and
	// third find every block cached.
	torch.EmptyCPUCache()
	forward := func() {
		var ts []*torch.Tensor
		for _, n := range []int64{1, 3, 5, 2, 7, 4} {
			ts = append(ts, torch.Unscope(torch.Empty(mib(n), torch.Float32, torch.CPU)))
		}
		for _, t := range ts {
			t.Close()
		}
	}
	forward()
	before := torch.CPUCache()
	forward()
	forward()
	now := torch.CPUCache()
	require.Equal(t, before.Misses, now.Misses, "a repeated forward misses nothing")
	require.Equal(t, before.Hits+12, now.Hits)

	// Shapes that change: 64 MiB freed, then 48 MiB asked for. Holding both
	// would pass the most handed out at once since EmptyCPUCache.
	torch.EmptyCPUCache()
	big := torch.Unscope(torch.Empty(mib(64), torch.Float32, torch.CPU))
	big.Close()
	other := torch.Unscope(torch.Empty(mib(48), torch.Float32, torch.CPU))
	other.Close()
	require.Equal(t, int64(48<<20), torch.CPUCache().CachedBytes, "the 64 MiB block was given back for the 48 MiB one")

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
