package torch_test

import (
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/dp2osr/dp2o/internal/testutil"
	"github.com/dp2osr/dp2o/torch"
)

func TestNestedScopes(t *testing.T) {
	testutil.NoLeak(t)
	before := torch.LiveTensors()
	outer := torch.NewScope()
	a := torch.Ones([]int64{2}, torch.Float32, torch.CPU)
	inner := torch.NewScope()
	b := a.AddScalar(1)
	c := b.MulScalar(2)
	d := c.Neg()
	require.Equal(t, 3, inner.Len())
	require.Same(t, c, inner.Keep(c), "Keep returns its first argument")
	require.Equal(t, 2, inner.Len())
	inner.Close()
	require.True(t, b.Closed())
	require.True(t, d.Closed())
	require.False(t, c.Closed(), "kept tensor moved to the outer scope")
	require.False(t, a.Closed())
	require.Equal(t, []float32{4, 4}, c.Float32s())
	inner.Close() // idempotent
	require.False(t, c.Closed())
	require.Equal(t, 2, outer.Len())

	outer.Close()
	require.True(t, a.Closed())
	require.True(t, c.Closed(), "the outer scope frees what the inner one kept")
	outer.Close()
	require.Equal(t, before, torch.LiveTensors())

	// Keep from the outermost scope leaves the tensor to the caller.
	s := torch.NewScope()
	k := s.Keep(torch.Zeros([]int64{3}, torch.Float32, torch.CPU))
	s.Close()
	require.False(t, k.Closed())
	k.Close()

	// Closing a tensor early is fine; the scope skips it.
	s = torch.NewScope()
	e := torch.Ones([]int64{1}, torch.Float32, torch.CPU)
	e.Close()
	require.Equal(t, 0, s.Len())
	s.Close()

	// Unscope removes a tensor from its scope.
	s = torch.NewScope()
	u := torch.Unscope(torch.Ones([]int64{1}, torch.Float32, torch.CPU))
	s.Close()
	require.False(t, u.Closed())
	u.Close()

	// KeepAll and nil entries.
	s = torch.NewScope()
	ts := s.KeepAll([]*torch.Tensor{torch.Ones([]int64{1}, torch.Float32, torch.CPU), nil})
	require.Nil(t, s.Keep())
	s.Close()
	require.False(t, ts[0].Closed())
	ts[0].Close()
	require.Equal(t, before, torch.LiveTensors())
}

func TestScopedHelpers(t *testing.T) {
	testutil.NoLeak(t)
	before := torch.LiveTensors()
	var tmp *torch.Tensor
	y := torch.Scoped(func() *torch.Tensor {
		tmp = torch.Ones([]int64{2, 2}, torch.Float32, torch.CPU)
		return tmp.MulScalar(3).Sum()
	})
	require.True(t, tmp.Closed())
	require.Equal(t, 12.0, y.Item())
	require.Equal(t, before+1, torch.LiveTensors())
	y.Close()

	parts := torch.ScopedList(func() []*torch.Tensor {
		return torch.Arange(0, 6, 1, torch.Float32, torch.CPU).Chunk(3, 0)
	})
	require.Len(t, parts, 3)
	require.Equal(t, before+3, torch.LiveTensors())
	require.Equal(t, []float32{2, 3}, parts[1].Float32s())
	for _, p := range parts {
		p.Close()
	}

	// A scope frees its tensors when the function panics with a *torch.Error.
	err := torch.Try(func() {
		torch.Scoped(func() *torch.Tensor {
			torch.Ones([]int64{2}, torch.Float32, torch.CPU).Matmul(torch.Ones([]int64{3, 3}, torch.Float32, torch.CPU))
			return nil
		})
	})
	require.Error(t, err)
	require.Equal(t, before, torch.LiveTensors())
}

// TestThen checks that Then frees the step's temporaries and its input,
// except an input named in keep or returned by the step.
func TestThen(t *testing.T) {
	testutil.NoLeak(t)
	before := torch.LiveTensors()
	x := torch.Unscope(torch.Ones([]int64{2}, torch.Float32, torch.CPU))
	defer x.Close()
	var tmp *torch.Tensor
	double := func(h *torch.Tensor) *torch.Tensor {
		tmp = h.MulScalar(1)
		return tmp.MulScalar(2)
	}
	h := torch.Then(x, double, x) // the caller's input: kept
	require.False(t, x.Closed())
	require.True(t, tmp.Closed())
	first := h
	h = torch.Then(h, double) // a step's own output: closed
	require.True(t, first.Closed())
	same := torch.Then(h, func(h *torch.Tensor) *torch.Tensor { return h })
	require.Same(t, h, same)
	require.False(t, h.Closed())
	require.Equal(t, []float32{4, 4}, h.Float32s())
	require.Equal(t, before+2, torch.LiveTensors())
	h.Close()
}

func TestScopesPerGoroutine(t *testing.T) {
	testutil.NoLeak(t)
	before := torch.LiveTensors()
	outer := torch.NewScope()
	mine := torch.Ones([]int64{1}, torch.Float32, torch.CPU)

	// A goroutine without a scope: its tensors are not collected by ours.
	var foreign *torch.Tensor
	done := make(chan struct{})
	go func() {
		foreign = torch.Ones([]int64{1}, torch.Float32, torch.CPU)
		close(done)
	}()
	<-done
	require.Equal(t, 1, outer.Len())

	// Many goroutines with their own (nested) scopes, in parallel.
	var wg sync.WaitGroup
	results := make([]*torch.Tensor, 32)
	for i := range results {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s := torch.NewScope()
			defer s.Close()
			acc := torch.Zeros([]int64{4}, torch.Float32, torch.CPU)
			for j := range 50 {
				inner := torch.NewScope()
				acc = inner.Keep(acc.AddScalar(float64(j)).MulScalar(1))
				runtime.Gosched()
				inner.Close()
			}
			results[i] = s.Keep(acc.AddScalar(float64(i)))
		}()
	}
	wg.Wait()
	require.Equal(t, 1, outer.Len(), "other goroutines' tensors are not in this scope")
	outer.Close()
	require.True(t, mine.Closed())
	require.False(t, foreign.Closed())
	foreign.Close()
	for i, r := range results {
		require.False(t, r.Closed())
		require.Equal(t, float32(1225+i), r.Float32s()[0])
		r.Close()
	}
	require.Equal(t, before, torch.LiveTensors())
}

func TestScopeClosedOutOfOrder(t *testing.T) {
	testutil.NoLeak(t)
	before := torch.LiveTensors()
	// Another goroutine holds a scope open meanwhile (scopes are tracked
	// only while some are open).
	release, held := make(chan struct{}), make(chan struct{})
	go func() {
		s := torch.NewScope()
		close(held)
		<-release
		s.Close()
	}()
	<-held
	defer close(release)
	outer := torch.NewScope()
	inner := torch.NewScope()
	outer.Close() // wrong order: the inner scope stays current
	x := torch.Ones([]int64{1}, torch.Float32, torch.CPU)
	inner.Close()
	require.True(t, x.Closed())
	// Neither scope is current any more: a new tensor belongs to no scope,
	// so a forgotten one is left to the garbage collector (a closed scope
	// holding it would keep it alive forever).
	for range 50 {
		torch.Ones([]int64{1}, torch.Float32, torch.CPU)
	}
	deadline := time.Now().Add(5 * time.Second)
	for torch.LiveTensors() > before && time.Now().Before(deadline) {
		runtime.GC()
		time.Sleep(10 * time.Millisecond)
	}
	require.Equal(t, before, torch.LiveTensors(), "tensors were registered with a closed scope")
	s := torch.NewScope()
	y := torch.Ones([]int64{1}, torch.Float32, torch.CPU)
	kept := s.Keep(y)
	s.Close()
	require.False(t, kept.Closed())
	kept.Close()
	require.Equal(t, before, torch.LiveTensors())
}

func TestCleanupFreesForgottenTensors(t *testing.T) {
	before := torch.LiveTensors()
	func() {
		for range 100 {
			torch.Ones([]int64{16}, torch.Float32, torch.CPU) // never closed, in no scope
		}
	}()
	require.GreaterOrEqual(t, torch.LiveTensors(), before+100)
	deadline := time.Now().Add(5 * time.Second)
	for torch.LiveTensors() > before && time.Now().Before(deadline) {
		runtime.GC()
		time.Sleep(10 * time.Millisecond)
	}
	require.LessOrEqual(t, torch.LiveTensors(), before, "the runtime cleanup frees unreachable tensors")
}
