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
namespace {

struct LiveSlot {
  std::atomic<int64_t> tensors;
  std::atomic<int64_t> bytes;
  std::atomic<int> draining;  // 1 while this thread frees a deferred list it took
  int state;                  // 0 unregistered, 1 registered, 2 the thread is exiting
};

std::mutex g_slots_mu;
std::vector<LiveSlot *> g_slots;
int64_t g_retired_tensors = 0;  // guarded by g_slots_mu
int64_t g_retired_bytes = 0;
std::atomic<int64_t> g_exiting_tensors{0};  // counts of threads past their slot's end
std::atomic<int64_t> g_exiting_bytes{0};

// Zero-initialised and trivially destructible: reaching it needs no guard.
thread_local LiveSlot tl_slot __attribute__((tls_model("initial-exec")));

struct SlotRetirer {
  ~SlotRetirer() {
    std::lock_guard<std::mutex> lock(g_slots_mu);
    g_retired_tensors += tl_slot.tensors.load(std::memory_order_relaxed);
    g_retired_bytes += tl_slot.bytes.load(std::memory_order_relaxed);
    tl_slot.tensors.store(0, std::memory_order_relaxed);
    tl_slot.bytes.store(0, std::memory_order_relaxed);
    for (size_t i = 0; i < g_slots.size(); i++) {
      if (g_slots[i] == &tl_slot) {
        g_slots[i] = g_slots.back();
        g_slots.pop_back();
        break;
      }
    }
    tl_slot.state = 2;
  }
};
thread_local SlotRetirer tl_retirer;

void register_slot() {
  std::lock_guard<std::mutex> lock(g_slots_mu);
  g_slots.push_back(&tl_slot);
  (void)&tl_retirer;  // odr-use: constructs it, so its destructor runs at thread exit
  tl_slot.state = 1;
}

}  // namespace

void live_add(int64_t tensors, int64_t bytes) {
  LiveSlot &s = tl_slot;
  if (s.state != 1) {
    if (s.state == 2) {  // during the thread's own teardown
      g_exiting_tensors.fetch_add(tensors, std::memory_order_relaxed);
      g_exiting_bytes.fetch_add(bytes, std::memory_order_relaxed);
      return;
    }
    register_slot();
  }
  s.tensors.store(s.tensors.load(std::memory_order_relaxed) + tensors, std::memory_order_relaxed);
  s.bytes.store(s.bytes.load(std::memory_order_relaxed) + bytes, std::memory_order_relaxed);
}

void live_draining(bool on) {
  LiveSlot &s = tl_slot;
  if (s.state == 0) register_slot();
  s.draining.store(on ? 1 : 0, std::memory_order_release);
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
    while (s->draining.load(std::memory_order_acquire) != 0) std::this_thread::yield();
  }
  int64_t t = g_retired_tensors + g_exiting_tensors.load();
  int64_t b = g_retired_bytes + g_exiting_bytes.load();
  for (LiveSlot *s : g_slots) {
    t += s->tensors.load(std::memory_order_relaxed);
    b += s->bytes.load(std::memory_order_relaxed);
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
