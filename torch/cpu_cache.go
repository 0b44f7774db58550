package torch

// #include "csrc/dp2o.h"
import "C"

// CPUCacheStats describes the caching allocator that holds CPU tensor
// memory (torch/csrc/cpu_cache.cpp): freed blocks of 1 MiB and more are kept
// by size class and handed out again, instead of going back to the system
// and faulting their pages in again at the next forward. DP2O_CPU_CACHE_MB
// bounds what it keeps (default 1024; 0 at process start turns it off).
type CPUCacheStats struct {
	Enabled      bool
	CachedBytes  int64 // freed memory held for reuse
	Hits, Misses int64 // allocations of 1 MiB and more served from the cache, and not
}

// CPUCache reports the caching allocator's state.
func CPUCache() CPUCacheStats {
	var cached, hits, misses C.int64_t
	on := C.dp2o_cpu_cache_stats(&cached, &hits, &misses) != 0
	return CPUCacheStats{Enabled: on, CachedBytes: int64(cached), Hits: int64(hits), Misses: int64(misses)}
}

// EmptyCPUCache returns every cached CPU block to the system, as
// torch.cuda.empty_cache does for the GPU (e.g. between a sampling phase and
// a training phase whose tensors have other sizes). The cache never holds
// more than the most memory handed out at once since the last
// EmptyCPUCache (or the start).
func EmptyCPUCache() { C.dp2o_cpu_cache_empty() }
