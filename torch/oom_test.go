package torch_test

import (
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/dp2osr/dp2o/internal/testutil"
	"github.com/dp2osr/dp2o/torch"
)

// TestOutOfMemory asks for far more memory than any machine has: libtorch's
// allocator fails, and the binding turns that into an error, not a crash.
func TestOutOfMemory(t *testing.T) {
	testutil.NoLeak(t)
	dev := testutil.Device(t)
	err := torch.Try(func() {
		torch.Empty([]int64{1 << 20, 1 << 20, 1 << 10}, torch.Float32, dev) // 4 PiB
	})
	require.Error(t, err)
	var te *torch.Error
	require.ErrorAs(t, err, &te)
	t.Log(err)
	// The process goes on working.
	x := torch.Ones([]int64{2}, torch.Float32, dev)
	defer x.Close()
	require.Equal(t, int64(2), x.Numel())
}
