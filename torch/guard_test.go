package torch_test

import (
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/dp2osr/dp2o/torch"
)

// Unscoped tensors first wait in a nursery and get their runtime cleanup
// only if still open when they leave it, which happens on other goroutines
// (those pushing newer tensors in, and the sweep after each collection).
// Closing, forgetting and keeping tensors from several goroutines at once,
// with collections running, must free every handle exactly once.
func TestNurseryConcurrentCloseAndSweep(t *testing.T) {
	before := torch.LiveTensors()
	stop := make(chan struct{})
	var gcDone sync.WaitGroup
	gcDone.Add(1)
	go func() {
		defer gcDone.Done()
		for {
			select {
			case <-stop:
				return
			default:
				runtime.GC()
				time.Sleep(time.Millisecond)
			}
		}
	}()
	var wg sync.WaitGroup
	kept := make([][]*torch.Tensor, 4)
	for g := range kept {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 5000 {
				x := torch.Ones([]int64{2}, torch.Float32, torch.CPU)
				switch i % 3 {
				case 0:
					x.Close()
				case 1:
					kept[g] = append(kept[g], x) // closed at the end
				}
				// case 2: forgotten, for the runtime cleanup
			}
		}()
	}
	wg.Wait()
	close(stop)
	gcDone.Wait()
	for _, ks := range kept {
		for _, x := range ks {
			require.False(t, x.Closed())
			sum := x.Sum()
			require.Equal(t, 2.0, sum.Item())
			sum.Close()
			x.Close()
		}
	}
	deadline := time.Now().Add(10 * time.Second)
	for torch.LiveTensors() > before && time.Now().Before(deadline) {
		runtime.GC()
		time.Sleep(10 * time.Millisecond)
	}
	require.Equal(t, before, torch.LiveTensors(), "every handle is freed once: closed, or by its cleanup")
}

// The live counters are kept per OS thread and summed on reading. A thread
// that exits hands its counts over: a tensor made on a thread that then
// exits, and closed on another, leaves the totals where they started.
func TestLiveCountersSurviveThreadExit(t *testing.T) {
	before, beforeBytes := torch.LiveTensors(), torch.LiveBytes()
	made := make(chan *torch.Tensor)
	go func() {
		// Locked and never unlocked: the runtime ends this OS thread when
		// the goroutine returns.
		runtime.LockOSThread()
		made <- torch.Unscope(torch.Ones([]int64{4, 4}, torch.Float32, torch.CPU))
	}()
	x := <-made
	require.Equal(t, before+1, torch.LiveTensors())
	require.Equal(t, beforeBytes+4*4*4, torch.LiveBytes())
	time.Sleep(50 * time.Millisecond) // let the thread exit
	require.Equal(t, before+1, torch.LiveTensors(), "the exited thread's count is kept")
	x.Close()
	require.Equal(t, before, torch.LiveTensors())
	require.Equal(t, beforeBytes, torch.LiveBytes())
}

// Small CPU tensors closed with Close wait on the shim's lazy list, which
// any goroutine's next shim call empties. Counting must not miss a list
// another goroutine took an instant before and is still freeing: while one
// goroutine keeps emptying the list, the counts another takes after closing
// everything it made are exact every time.
func TestLiveCountsWhileAnotherGoroutineFrees(t *testing.T) {
	z := torch.Unscope(torch.Ones([]int64{1}, torch.Float32, torch.CPU))
	defer z.Close()
	base := torch.LiveTensors()
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			select {
			case <-stop:
				return
			default:
				z.Item() // a shim call that makes no tensor: it empties the list
			}
		}
	}()
	xs := make([]*torch.Tensor, 2000)
	for round := range 100 {
		for i := range xs {
			xs[i] = torch.Unscope(torch.Ones([]int64{2}, torch.Float32, torch.CPU))
		}
		for _, x := range xs {
			x.Close()
		}
		if got := torch.LiveTensors(); got != base {
			close(stop)
			<-done
			t.Fatalf("round %d: %d live tensors after closing all, want %d", round, got, base)
		}
	}
	close(stop)
	<-done
}

// Handle objects are recycled through per-thread free lists (pool.cpp). A
// handle made on one OS thread and freed on another lands on the second
// thread's list; threads whose lists are full exit and free them. The
// counts stay exact and nothing freed is used again while alive.
func TestHandlePoolAcrossThreads(t *testing.T) {
	before := torch.LiveTensors()
	ch := make(chan *torch.Tensor, 64)
	var wg sync.WaitGroup
	for p := range 2 {
		wg.Add(2)
		go func() { // maker, on a thread that exits at the end
			defer wg.Done()
			runtime.LockOSThread()
			for i := range 6000 {
				ch <- torch.Full([]int64{1}, float64(p*10000+i), torch.Float32, torch.CPU)
			}
		}()
		go func() { // closer, checking each value first
			defer wg.Done()
			runtime.LockOSThread()
			for range 6000 {
				x := <-ch
				v := x.Item()
				assert.True(t, v >= 0 && v < 20000, "value %v", v)
				x.Close()
			}
		}()
	}
	wg.Wait()
	require.Equal(t, before, torch.LiveTensors())
}
