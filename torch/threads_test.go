package torch_test

import (
	"runtime"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/dp2osr/dp2o/torch"
)

// TestNumThreadsAppliesOnEveryThread: libtorch keeps the intra-op thread
// count per OS thread; SetNumThreads from one goroutine must hold for ops
// that other goroutines run on other, already used threads.
func TestNumThreadsAppliesOnEveryThread(t *testing.T) {
	prev := torch.NumThreads()
	defer torch.SetNumThreads(prev)
	// Workers pinned to their own OS threads for the whole test, so the
	// threads are initialised by libtorch once and then reused.
	const workers = 4
	ask := make([]chan struct{}, workers)
	answer := make(chan int)
	for i := range ask {
		ask[i] = make(chan struct{})
		go func(c chan struct{}) {
			runtime.LockOSThread()
			defer runtime.UnlockOSThread()
			for range c {
				x := torch.Ones([]int64{64, 64}, torch.Float32, torch.CPU)
				x.Matmul(x).Close()
				x.Close()
				answer <- torch.NumThreads()
			}
		}(ask[i])
	}
	defer func() {
		for _, c := range ask {
			close(c)
		}
	}()
	for _, n := range []int{1, 2, 1, 2} {
		torch.SetNumThreads(n)
		for i, c := range ask {
			c <- struct{}{}
			require.Equal(t, n, <-answer, "worker %d after SetNumThreads(%d)", i, n)
		}
	}
}
