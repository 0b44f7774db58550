// cpu_cache.cpp: a caching allocator for CPU tensor memory.
//
// Why: a Go program calls libtorch from whichever OS thread runs the
// goroutine, so its tensors are allocated and freed across several threads.
// glibc gives each thread its own arena and, when a secondary heap of one
// empties, unmaps it; tensors over 32 MiB are always their own mmap. A
// model's forward then faults every page of its large maps in again at each
// call (a Python process, single-threaded on glibc's main arena, keeps them):
// three times pyiqa's page faults per MUSIQ forward, 15-20 % of its time in
// the kernel. This allocator keeps freed blocks of 1 MiB and more, by size
// class, and hands them out again, as PyTorch's CUDA caching allocator does
// on the GPU. Smaller blocks go to glibc, which reuses them well.
//
// Blocks come from c10's alloc_cpu (64-byte aligned) with a 64-byte header
// that holds the block's class size, so the deleter needs only the data
// pointer (oneDNN's raw_allocate/raw_deallocate requires context == data).
// Classes are the size rounded up to an eighth of its power of two (at most
// 12.5 % over). The memory it holds, handed out plus cached, never passes the
// high-water mark of what was handed out at once: a miss that would pass it
// first gives back cached blocks of other sizes, oldest first (while shapes
// change, as in a VAE encoder going down its levels, it holds no more than
// the forward needs at its peak; a loop of forwards of the same shapes finds
// its blocks cached). The cache holds at most DP2O_CPU_CACHE_MB MiB (default 1024;
// 0 turns the allocator off, leaving libtorch's own); freeing beyond that
// returns the block to the system. A failed allocation, of any size, empties
// the cache and tries once more before reporting the out-of-memory error.
#include "shim.h"

#include <torch/version.h>
#include <c10/core/Allocator.h>
#include <c10/core/CPUAllocator.h>
#include <c10/core/impl/alloc_cpu.h>

#include <cstdlib>
#include <map>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

namespace dp2o {
namespace {

constexpr size_t kHeader = 64;             // keeps c10's 64-byte alignment
constexpr size_t kMinCached = size_t(1) << 20;  // smaller blocks go to glibc

size_t size_class(size_t n) {
  size_t p = 1;
  while (p < n) p <<= 1;
  size_t step = std::max<size_t>(p / 16, 4096);  // p/16 <= n/8: at most 12.5 % over
  return (n + step - 1) / step * step;
}

class CachingCPUAllocator final : public c10::Allocator {
 public:
  explicit CachingCPUAllocator(size_t limit) : limit_(limit) {}

// libtorch 2.3 made allocate non-const and added copy_data.
#if TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 3)
  c10::DataPtr allocate(size_t n) override { return alloc(n); }
  void copy_data(void *dest, const void *src, std::size_t count) const override {
    default_copy_data(dest, src, count);
  }
#else
  c10::DataPtr allocate(size_t n) const override { return alloc(n); }
#endif
  c10::DeleterFnPtr raw_deleter() const override { return &release; }

  // empty frees every cached block, and the high-water mark starts again
  // from what is handed out now.
  void empty() {
    std::vector<void *> drop;
    {
      std::lock_guard<std::mutex> lock(mu_);
      for (auto &kv : free_)
        for (const Block &b : kv.second) drop.push_back(b.base);
      free_.clear();
      order_.clear();
      cached_ = 0;
      peak_live_ = live_;
    }
    for (void *b : drop) c10::free_cpu(b);
  }

  void stats(int64_t *cached, int64_t *hits, int64_t *misses) {
    std::lock_guard<std::mutex> lock(mu_);
    *cached = int64_t(cached_);
    *hits = hits_;
    *misses = misses_;
  }

 private:
  c10::DataPtr alloc(size_t n) const {
    auto *self = const_cast<CachingCPUAllocator *>(this);
    if (n == 0) return {nullptr, nullptr, &release, c10::Device(c10::DeviceType::CPU)};
    if (n < kMinCached) {
      void *p = self->fresh(n + kHeader);
      *static_cast<size_t *>(p) = 0;  // not cached
      return wrap(p);
    }
    size_t c = size_class(n);
    void *p = nullptr;
    {
      std::lock_guard<std::mutex> lock(self->mu_);
      auto it = self->free_.find(c);
      if (it != self->free_.end() && !it->second.empty()) {
        Block b = it->second.back();
        it->second.pop_back();
        self->order_.erase(b.seq);
        self->cached_ -= c;
        self->hits_++;
        p = b.base;
      } else {
        // A miss: if handed-out plus cached memory would pass its
        // high-water mark, give back cached blocks of other sizes, oldest
        // first, until it does not.
        self->misses_++;
        while (self->live_ + self->cached_ + c > self->peak_live_ && !self->order_.empty()) {
          auto old = self->order_.begin();
          size_t oc = old->second.first;
          void *ob = old->second.second;
          auto &v = self->free_[oc];
          for (size_t i = 0; i < v.size(); i++) {
            if (v[i].base == ob) {
              v[i] = v.back();
              v.pop_back();
              break;
            }
          }
          self->order_.erase(old);
          self->cached_ -= oc;
          c10::free_cpu(ob);
        }
      }
      // Counted as handed out now, under the same lock; a failed fresh
      // allocation below takes it back.
      self->live_ += c;
      self->peak_live_ = std::max(self->peak_live_, self->live_);
    }
    if (p == nullptr) {
      try {
        p = self->fresh(c + kHeader);
      } catch (...) {
        std::lock_guard<std::mutex> lock(self->mu_);
        self->live_ -= c;
        throw;
      }
      *static_cast<size_t *>(p) = c;
    }
    return wrap(p);
  }

  // wrap is the DataPtr of block p: data and context are both the memory
  // after the header (raw_allocate requires them equal).
  static c10::DataPtr wrap(void *p) {
    void *data = static_cast<char *>(p) + kHeader;
    return {data, data, &release, c10::Device(c10::DeviceType::CPU)};
  }

  // fresh allocates from the system; a failure empties the cache and tries
  // once more (the second failure's error reaches the caller).
  void *fresh(size_t n) {
    try {
      return c10::alloc_cpu(n);
    } catch (const c10::Error &) {
      empty();
      return c10::alloc_cpu(n);
    }
  }

  static void release(void *data);

  size_t limit_;
  size_t live_ = 0, peak_live_ = 0;  // bytes of cached-size blocks handed out
  std::mutex mu_;
  struct Block {
    void *base;
    uint64_t seq;  // when it was cached: the key in order_
  };
  std::unordered_map<size_t, std::vector<Block>> free_;  // class size -> blocks
  std::map<uint64_t, std::pair<size_t, void *>> order_;   // oldest first
  uint64_t seq_ = 0;
  size_t cached_ = 0;
  int64_t hits_ = 0, misses_ = 0;
};

CachingCPUAllocator *g_alloc = nullptr;  // set once, before any tensor uses it

void CachingCPUAllocator::release(void *data) {
  if (data == nullptr) return;
  void *base = static_cast<char *>(data) - kHeader;
  size_t c = *static_cast<size_t *>(base);
  if (c != 0) {
    CachingCPUAllocator *a = g_alloc;
    std::lock_guard<std::mutex> lock(a->mu_);
    a->live_ -= c;
    if (a->cached_ + c <= a->limit_) {
      // A deleter must not throw: if the bookkeeping cannot grow, the block
      // goes back to the system instead.
      try {
        uint64_t seq = a->seq_;
        a->free_[c].push_back({base, seq});
        try {
          a->order_.emplace(seq, std::make_pair(c, base));
        } catch (...) {
          a->free_[c].pop_back();
          throw;
        }
        a->seq_++;
        a->cached_ += c;
        return;
      } catch (...) {
      }
    }
  }
  c10::free_cpu(base);
}

size_t limit_from_env() {
  const char *e = std::getenv("DP2O_CPU_CACHE_MB");
  if (e == nullptr || *e == '\0') return size_t(1024) << 20;
  char *end = nullptr;
  long long mb = std::strtoll(e, &end, 10);
  if (end == e || mb < 0) return size_t(1024) << 20;
  return size_t(mb) << 20;
}

// Registered when the shim is loaded, before the first tensor: a block
// always returns to the allocator that made it (DataPtr carries its deleter),
// so tensors made before (none, in practice) stay valid either way.
const bool g_registered = [] {
  size_t limit = limit_from_env();
  if (limit == 0) return false;
  g_alloc = new CachingCPUAllocator(limit);  // lives as long as the process
  c10::SetCPUAllocator(g_alloc, /*priority=*/1);
  return true;
}();

}  // namespace
}  // namespace dp2o

extern "C" {

void dp2o_cpu_cache_empty(void) {
  if (dp2o::g_alloc != nullptr) dp2o::g_alloc->empty();
}

int dp2o_cpu_cache_stats(int64_t *cached, int64_t *hits, int64_t *misses) {
  if (dp2o::g_alloc == nullptr) {
    *cached = *hits = *misses = 0;
    return 0;
  }
  dp2o::g_alloc->stats(cached, hits, misses);
  return 1;
}

}  // extern "C"
