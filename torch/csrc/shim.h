// shim.h: helpers shared by the shim's C++ translation units.
#pragma once

#include <ATen/ATen.h>
#include <c10/core/GradMode.h>

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "dp2o.h"

// dp2o_owned is the heap object behind a dp2o_tensor: the tensor and the
// byte size counted for it when it was created, so the live-byte counter
// stays exact even if the tensor is later resized in place.
struct dp2o_owned : dp2o_owned_head {
  at::Tensor t;
  int64_t bytes;
};

namespace dp2o {

// LiveSlot is one thread's share of the live-handle counters (live.cpp):
// its owner writes it with plain stores, readers sum every thread's under a
// lock. Fields are read and written with __atomic builtins so that a
// __thread variable (no TLS wrapper call, initial-exec model) can hold it.
struct LiveSlot {
  int64_t tensors;
  int64_t bytes;
  int draining;  // 1 while this thread frees a deferred list it took
  int state;     // 0 unregistered, 1 registered, 2 the thread is exiting
};
extern __thread LiveSlot tl_live __attribute__((tls_model("initial-exec")));
void live_add_slow(int64_t tensors, int64_t bytes);
void live_draining_slow(bool on);

// live_add moves the live-handle counters by tensors handles of bytes bytes
// in all (inline: it runs twice per op); live_totals reads them.
inline void live_add(int64_t tensors, int64_t bytes) {
  LiveSlot &s = tl_live;
  if (__builtin_expect(s.state != 1, 0)) {
    live_add_slow(tensors, bytes);
    return;
  }
  __atomic_store_n(&s.tensors, __atomic_load_n(&s.tensors, __ATOMIC_RELAXED) + tensors, __ATOMIC_RELAXED);
  __atomic_store_n(&s.bytes, __atomic_load_n(&s.bytes, __ATOMIC_RELAXED) + bytes, __ATOMIC_RELAXED);
}
void live_totals(int64_t *tensors, int64_t *bytes);
// live_draining marks the calling thread as freeing a deferred list it took
// (live_totals waits for it).
inline void live_draining(bool on) {
  LiveSlot &s = tl_live;
  if (__builtin_expect(s.state != 1, 0)) {
    live_draining_slow(on);
    return;
  }
  __atomic_store_n(&s.draining, on ? 1 : 0, __ATOMIC_RELEASE);
}

using Owned = dp2o_owned;

// owned_memory returns memory for a new handle object, from the calling
// thread's free list when it has one (pool.cpp); owned_delete destroys a
// handle object and keeps its memory on that list.
void *owned_memory();
void owned_delete(Owned *o);

// owned is the object behind a handle; handle_of is an object's handle.
inline Owned *owned(dp2o_tensor h) { return reinterpret_cast<Owned *>(h); }
inline dp2o_tensor handle_of(Owned *o) { return reinterpret_cast<dp2o_tensor>(o); }

inline dp2o_tensor wrap(at::Tensor t) {
  int64_t b = t.defined() ? static_cast<int64_t>(t.numel()) * static_cast<int64_t>(t.element_size()) : 0;
  live_add(1, b);
  // Freeing may wait for the next call only where that frees little and
  // nothing else: small CPU storage, no autograd graph behind the tensor.
  int32_t deferrable = t.defined() && t.device().is_cpu() && !t.requires_grad() && t.has_storage() &&
                       t.storage().nbytes() <= DP2O_DEFERRED_MAX_BYTES;
  auto *o = new (owned_memory()) Owned;
  o->next = nullptr;
  o->deferrable = deferrable;
  o->reserved = 0;
  o->t = std::move(t);
  o->bytes = b;
  return handle_of(o);
}

// The handles freed lazily (dp2o_owned_head): a lock-free stack that Go
// pushes onto; drain frees them all.
extern std::atomic<uintptr_t> g_deferred;
void drain_deferred_slow();
inline void drain_deferred() {
  if (g_deferred.load(std::memory_order_relaxed) != 0) drain_deferred_slow();
}

inline at::Tensor &T(dp2o_tensor h) { return owned(h)->t; }

// autocast_enabled, autocast_dtype and set_autocast read and set the
// calling thread's autocast state for a device type (core.cpp: the
// accessors changed in libtorch 2.4).
bool autocast_enabled(at::DeviceType d);
at::ScalarType autocast_dtype(at::DeviceType d);
void set_autocast(at::DeviceType d, bool on, at::ScalarType dtype);

inline char *dup_err(const char *msg) {
  size_t n = std::strlen(msg);
  char *p = static_cast<char *>(std::malloc(n + 1));
  if (p) std::memcpy(p, msg, n + 1);
  return p;
}

// err_of converts an exception into the C error string; c10::Error's
// what() carries a backtrace, so only its message is kept.
inline char *err_of(const c10::Error &e) { return dup_err(e.what_without_backtrace()); }
inline char *err_of(const std::exception &e) { return dup_err(e.what()); }

inline std::vector<at::Tensor> tensors_of(dp2o_tensor *hs, int n) {
  std::vector<at::Tensor> v;
  v.reserve(n);
  for (int i = 0; i < n; i++) v.push_back(T(hs[i]));
  return v;
}

inline c10::optional<at::Tensor> opt_tensor(dp2o_tensor h) {
  if (!h) return c10::nullopt;
  return T(h);
}

// out_list returns a malloc'd array of handles for a vector of tensors.
inline dp2o_tensor *out_list(std::vector<at::Tensor> v, int *n) {
  *n = static_cast<int>(v.size());
  auto *arr = static_cast<dp2o_tensor *>(std::malloc(sizeof(dp2o_tensor) * (v.size() ? v.size() : 1)));
  for (size_t i = 0; i < v.size(); i++) arr[i] = wrap(std::move(v[i]));
  return arr;
}

}  // namespace dp2o

namespace dp2o {

// The intra-op thread count is per OS thread in libtorch's OpenMP backend
// (omp_set_num_threads), while Go runs a goroutine's calls on whichever
// thread is free. SetNumThreads therefore bumps a generation number, and
// every shim call applies the requested count on its thread when that
// thread has not seen the latest generation (one relaxed load otherwise).
extern std::atomic<int> g_threads_gen;
extern std::atomic<int> g_threads;
void apply_num_threads(int gen);
inline void sync_num_threads() {
  static thread_local int seen = 0;
  int gen = g_threads_gen.load(std::memory_order_relaxed);
  if (gen != seen) {
    seen = gen;
    apply_num_threads(gen);
  }
}

}  // namespace dp2o

#define DP2O_TRY \
  try {          \
    dp2o::drain_deferred(); \
    dp2o::sync_num_threads();
#define DP2O_CATCH                                   \
  }                                                  \
  catch (const c10::Error &e) {                      \
    return dp2o::err_of(e);                          \
  }                                                  \
  catch (const std::exception &e) {                  \
    return dp2o::err_of(e);                          \
  }                                                  \
  catch (...) {                                      \
    return dp2o::dup_err("unknown C++ exception");   \
  }                                                  \
  return nullptr;

// DP2O_TRY_R / DP2O_CATCH_R bracket a function returning a dp2o_result: the
// body stores the new handle in r_.t; an exception becomes r_.err.
#define DP2O_TRY_R                  \
  dp2o_result r_{0, nullptr}; \
  try {                             \
    dp2o::drain_deferred();         \
    dp2o::sync_num_threads();
#define DP2O_CATCH_R                                 \
  }                                                  \
  catch (const c10::Error &e) {                      \
    r_.err = dp2o::err_of(e);                        \
  }                                                  \
  catch (const std::exception &e) {                  \
    r_.err = dp2o::err_of(e);                        \
  }                                                  \
  catch (...) {                                      \
    r_.err = dp2o::dup_err("unknown C++ exception"); \
  }                                                  \
  return r_;

namespace dp2o {

inline at::Device dev(int64_t type, int64_t index) {
  return at::Device(static_cast<at::DeviceType>(type), static_cast<at::DeviceIndex>(index));
}

inline at::TensorOptions opts(at::ScalarType dtype, int64_t type, int64_t index) {
  return at::TensorOptions().dtype(dtype).device(dev(type, index));
}

// Hand-written kernels used by the op tables (extra.cpp).
at::Tensor rms_norm(const at::Tensor &x, const c10::optional<at::Tensor> &weight, double eps);
at::Tensor interpolate(const at::Tensor &x, at::IntArrayRef size, int64_t mode, bool align_corners, bool antialias);
at::Tensor pad(const at::Tensor &x, at::IntArrayRef pad, int64_t mode, double value);
at::Tensor linear(const at::Tensor &x, const at::Tensor &w, const c10::optional<at::Tensor> &b);
at::Tensor matmul(const at::Tensor &a, const at::Tensor &b);
at::Tensor max_pool2d(const at::Tensor &x, at::IntArrayRef kernel, at::IntArrayRef stride, at::IntArrayRef padding);
at::Tensor sdpa(const at::Tensor &q, const at::Tensor &k, const at::Tensor &v, const c10::optional<at::Tensor> &mask,
                bool causal, double scale, bool math);
at::Tensor clip_grad_norm(std::vector<at::Tensor> params, double max_norm, double norm_type);
void adamw_step(const at::Tensor &param, const at::Tensor &grad, const at::Tensor &exp_avg, const at::Tensor &exp_avg_sq,
                int64_t step, double lr, double beta1, double beta2, double eps, double weight_decay);

}  // namespace dp2o

// Inference fast paths (perf.cpp), where that file is present.
#if __has_include("perf.h")
#include "perf.h"
#endif
