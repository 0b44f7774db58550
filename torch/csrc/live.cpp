// live.cpp: the live-handle counters behind dp2o_live_tensors/bytes.
//
// Every handle made or freed updates them, so they sit on the shim's hottest
// path. Shared atomic counters cost two locked read-modify-writes per handle
// made and two per handle freed; instead each thread counts in its own slot
// (plain loads and stores, no lock prefix) and a reader sums the slots under
// a mutex. A tensor made on one thread and freed on another adds +1 to one
// slot and -1 to the other: the sum stays exact. A thread's counts move to
// the retired totals when it exits.
#include "shim.h"

#include <mutex>
#include <thread>

namespace dp2o {

// Zero-initialised plain data: reaching it needs no guard or wrapper call.
__thread LiveSlot tl_live __attribute__((tls_model("initial-exec")));

namespace {

std::mutex g_slots_mu;
std::vector<LiveSlot *> g_slots;
int64_t g_retired_tensors = 0;  // guarded by g_slots_mu
int64_t g_retired_bytes = 0;
std::atomic<int64_t> g_exiting_tensors{0};  // counts of threads past their slot's end
std::atomic<int64_t> g_exiting_bytes{0};

int64_t load(const int64_t &v) { return __atomic_load_n(&v, __ATOMIC_RELAXED); }

struct SlotRetirer {
  ~SlotRetirer() {
    std::lock_guard<std::mutex> lock(g_slots_mu);
    g_retired_tensors += load(tl_live.tensors);
    g_retired_bytes += load(tl_live.bytes);
    __atomic_store_n(&tl_live.tensors, 0, __ATOMIC_RELAXED);
    __atomic_store_n(&tl_live.bytes, 0, __ATOMIC_RELAXED);
    for (size_t i = 0; i < g_slots.size(); i++) {
      if (g_slots[i] == &tl_live) {
        g_slots[i] = g_slots.back();
        g_slots.pop_back();
        break;
      }
    }
    tl_live.state = 2;
  }
};
thread_local SlotRetirer tl_retirer;

void register_slot() {
  std::lock_guard<std::mutex> lock(g_slots_mu);
  g_slots.push_back(&tl_live);
  (void)&tl_retirer;  // odr-use: constructs it, so its destructor runs at thread exit
  tl_live.state = 1;
}

}  // namespace

void live_add_slow(int64_t tensors, int64_t bytes) {
  if (tl_live.state == 2) {  // during the thread's own teardown
    g_exiting_tensors.fetch_add(tensors, std::memory_order_relaxed);
    g_exiting_bytes.fetch_add(bytes, std::memory_order_relaxed);
    return;
  }
  register_slot();
  live_add(tensors, bytes);
}

void live_draining_slow(bool on) {
  if (tl_live.state == 0) {
    register_slot();
  }
  // A thread past its slot's end keeps the flag too, though live_totals
  // no longer sees it: its counts already went to the exiting totals.
  __atomic_store_n(&tl_live.draining, on ? 1 : 0, __ATOMIC_RELEASE);
}

void live_totals(int64_t *tensors, int64_t *bytes) {
  // What was freed lazily is not alive. The unconditional exchange (not
  // drain_deferred's relaxed peek) also orders this thread after any
  // thread that took the list before, whose draining flag is then seen.
  drain_deferred_slow();
  std::lock_guard<std::mutex> lock(g_slots_mu);
  // Another thread may have taken the deferred list an instant before and
  // still be freeing it: wait for it, so that the totals count none of it.
  for (LiveSlot *s : g_slots) {
    while (__atomic_load_n(&s->draining, __ATOMIC_ACQUIRE) != 0) std::this_thread::yield();
  }
  int64_t t = g_retired_tensors + g_exiting_tensors.load();
  int64_t b = g_retired_bytes + g_exiting_bytes.load();
  for (LiveSlot *s : g_slots) {
    t += load(s->tensors);
    b += load(s->bytes);
  }
  *tensors = t;
  *bytes = b;
}

}  // namespace dp2o

extern "C" {

int64_t dp2o_live_tensors(void) {
  int64_t t, b;
  dp2o::live_totals(&t, &b);
  return t;
}

int64_t dp2o_live_bytes(void) {
  int64_t t, b;
  dp2o::live_totals(&t, &b);
  return b;
}

}  // extern "C"
