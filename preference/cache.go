package preference

import (
	"container/list"

	"github.com/dp2osr/dp2o/torch"
)

// The Loader's cache bounds (DataConfig.LatentCacheBytes and
// PromptCacheBytes), in bytes of CPU memory. At the paper's scale (30,000
// groups) the caches would not fit unbounded: a C-FLUX group's nine VAE
// posteriors take about 4.5 MB and its T5 embedding 4 MB (8 MB in
// float32), on every rank.
const (
	DefaultLatentCacheBytes = 4 << 30
	DefaultPromptCacheBytes = 2 << 30
)

// tensorCache holds CPU tensors under string keys, bounded by their bytes:
// trim drops the least recently used entries, closing their tensors, until
// the rest fit. Written here rather than taken from an LRU library because
// it is bounded by bytes rather than entries, and evicts only when told
// (between batches, so a batch being assembled never loses a tensor it took
// from the cache).
type tensorCache struct {
	budget int64 // < 0: no bound
	used   int64
	ll     *list.List // front: most recently used
	items  map[string]*list.Element
	// hits, misses and evictions since the cache was made.
	hits, misses, evictions int
}

type cacheEntry struct {
	key   string
	ts    []*torch.Tensor // nil entries allowed
	bytes int64
}

func newTensorCache(budget int64) *tensorCache {
	return &tensorCache{budget: budget, ll: list.New(), items: map[string]*list.Element{}}
}

// get returns the tensors cached under key, now the most recently used.
func (c *tensorCache) get(key string) ([]*torch.Tensor, bool) {
	e, ok := c.items[key]
	if !ok {
		c.misses++
		return nil, false
	}
	c.hits++
	c.ll.MoveToFront(e)
	return e.Value.(*cacheEntry).ts, true
}

// put caches ts under key (a key not yet cached); the cache owns them.
func (c *tensorCache) put(key string, ts ...*torch.Tensor) {
	var n int64
	for _, t := range ts {
		if t != nil {
			n += t.Numel() * int64(t.DType().Size())
		}
	}
	c.items[key] = c.ll.PushFront(&cacheEntry{key: key, ts: ts, bytes: n})
	c.used += n
}

// trim evicts the least recently used entries until the cache fits its
// budget.
func (c *tensorCache) trim() {
	for c.budget >= 0 && c.used > c.budget {
		c.evict(c.ll.Back())
		c.evictions++
	}
}

func (c *tensorCache) evict(e *list.Element) {
	ent := c.ll.Remove(e).(*cacheEntry)
	delete(c.items, ent.key)
	c.used -= ent.bytes
	for _, t := range ent.ts {
		t.Close()
	}
}

// clear closes every cached tensor.
func (c *tensorCache) clear() {
	for c.ll.Len() > 0 {
		c.evict(c.ll.Back())
	}
}

// cacheBudget maps a DataConfig bound to a budget: 0 is def, negative is
// no bound.
func cacheBudget(v, def int64) int64 {
	switch {
	case v == 0:
		return def
	case v < 0:
		return -1
	}
	return v
}
