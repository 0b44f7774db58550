package preference

import (
	"fmt"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/dp2osr/dp2o/internal/testutil"
	"github.com/dp2osr/dp2o/torch"
)

// TestTensorCache: the least recently used entries go first, bytes are
// counted by dtype, nothing is evicted before trim, and evicted tensors
// are closed.
func TestTensorCache(t *testing.T) {
	testutil.NoLeak(t)
	mk := func(n int64, dt torch.DType) *torch.Tensor {
		return torch.Unscope(torch.Zeros([]int64{n}, dt, torch.CPU))
	}
	c := newTensorCache(100)
	a, b := mk(10, torch.Float32), mk(10, torch.Float64)
	c.put("a", a, nil) // 40 bytes, a nil entry (SD2's pooled prompt)
	c.put("b", b)      // 80 bytes
	require.EqualValues(t, 120, c.used)
	_, ok := c.get("a") // a is now the most recently used
	require.True(t, ok)
	require.Equal(t, 2, c.ll.Len(), "put must not evict before trim")
	c.trim()
	require.Equal(t, 1, c.evictions)
	_, ok = c.get("b")
	require.False(t, ok, "b, the least recently used, stays cached past the budget")
	require.True(t, b.Closed(), "the evicted tensor is not closed")
	ts, ok := c.get("a")
	require.True(t, ok)
	require.Same(t, a, ts[0])
	require.EqualValues(t, 40, c.used)
	require.Equal(t, [3]int{2, 1, 1}, [3]int{c.hits, c.misses, c.evictions})

	unbounded := newTensorCache(cacheBudget(-5, 7))
	unbounded.put("x", mk(1000, torch.Float32))
	unbounded.trim()
	require.Equal(t, 1, unbounded.ll.Len())
	require.EqualValues(t, 7, cacheBudget(0, 7))
	require.EqualValues(t, 3, cacheBudget(3, 7))
	c.clear()
	unbounded.clear()
	require.True(t, a.Closed())
	require.Zero(t, c.used)
}

// TestLoaderCacheBound: a loader whose caches keep nothing beyond the batch
// at hand yields the batches of one that keeps everything, bit for bit
// (an evicted posterior or prompt is computed again, from the same input
// on the same device),
// and holds no more than its bound between batches.
func TestLoaderCacheBound(t *testing.T) {
	p := tinySD2Pipeline(t)
	testutil.NoLeak(t)
	const perBatch, batches = 2, 4
	dir := t.TempDir()
	pairs := writeToyPairs(t, dir, 3, 4, 1, 32)
	pf, err := LoadPairs(pairs)
	require.NoError(t, err)
	loaders := map[string]*Loader{}
	for name, budget := range map[string]int64{"unbounded": -1, "bounded": 1} {
		dc, err := SD2Data(p)
		require.NoError(t, err)
		dc.LatentCacheBytes, dc.PromptCacheBytes = budget, budget
		l, err := NewLoader(dc, pf, filepath.Dir(pairs), perBatch, 3)
		require.NoError(t, err)
		defer l.Close()
		loaders[name] = l
	}
	for i := range batches {
		want, err := loaders["unbounded"].Next()
		require.NoError(t, err)
		got, err := loaders["bounded"].Next()
		require.NoError(t, err)
		wants := batchTensors(want)
		for k, c := range batchTensors(got) {
			testutil.AssertEqual(t, fmt.Sprintf("batch %d %s", i, c.name), c.t, wants[k].t)
		}
		got.Close()
		want.Close()
		lat, pr := loaders["bounded"].CacheStats()
		require.Zero(t, lat.Bytes, "batch %d: VAE posteriors held past a 1-byte bound", i)
		require.Zero(t, pr.Entries, "batch %d: prompts held past a 1-byte bound", i)
	}
	ulat, upr := loaders["unbounded"].CacheStats()
	blat, bpr := loaders["bounded"].CacheStats()
	require.Zero(t, ulat.Evictions+upr.Evictions)
	require.Positive(t, ulat.Hits, "4 batches of 2 pairs from 3 groups never hit the cache")
	require.Equal(t, ulat.Hits+ulat.Misses, blat.Hits+blat.Misses, "both loaders look up the same posteriors")
	require.Equal(t, blat.Misses, blat.Evictions, "the bounded loader keeps nothing")
	require.Equal(t, upr.Misses, upr.Entries)
	require.Greater(t, bpr.Misses, upr.Misses)
}
