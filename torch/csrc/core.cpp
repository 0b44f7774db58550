// core.cpp: tensor lifetime, metadata, autograd, generators and devices.
#include "shim.h"

#include <ATen/CPUGeneratorImpl.h>
#include <ATen/Parallel.h>
#include <ATen/autocast_mode.h>
#include <ATen/detail/CUDAHooksInterface.h>
#include <torch/version.h>

#include <sstream>

namespace dp2o {
std::atomic<uintptr_t> g_deferred{0};

void drain_deferred_slow() {
  // Marked as draining before the list is taken, so that a thread counting
  // live tensors that finds the list empty waits until these are freed.
  live_draining(true);
  uintptr_t p = g_deferred.exchange(0, std::memory_order_acq_rel);
  while (p != 0) {
    auto *o = owned(p);
    p = reinterpret_cast<uintptr_t>(o->next);
    live_add(-1, -o->bytes);
    dp2o::owned_delete(o);
  }
  live_draining(false);
}

std::atomic<int> g_threads_gen{0};
std::atomic<int> g_threads{0};

void apply_num_threads(int gen) {
  (void)gen;
  int n = g_threads.load();
  if (n > 0 && at::get_num_threads() != n) at::set_num_threads(n);
}
}  // namespace dp2o

using dp2o::T;
using dp2o::wrap;

extern "C" {

dp2o_err dp2o_version(char *buf, int n) {
  DP2O_TRY
  std::snprintf(buf, n, "%s", TORCH_VERSION);
  DP2O_CATCH
}

int dp2o_cuda_available(void) {
  try {
    return at::detail::getCUDAHooks().hasCUDA() ? 1 : 0;
  } catch (...) {
    return 0;
  }
}

int dp2o_cuda_device_count(void) {
  try {
    return at::detail::getCUDAHooks().getNumGPUs();
  } catch (...) {
    return 0;
  }
}

void dp2o_set_num_threads(int n) {
  if (n < 1) return;
  dp2o::g_threads.store(n);
  at::set_num_threads(n);
  dp2o::g_threads_gen.fetch_add(1);
}
int dp2o_get_num_threads(void) {
  dp2o::sync_num_threads();
  return at::get_num_threads();
}

int dp2o_has_native_sdpa(void) {
#if TORCH_VERSION_MAJOR >= 2
  return 1;
#else
  return 0;
#endif
}

void dp2o_set_allow_tf32(int cudnn, int cublas) {
  at::globalContext().setAllowTF32CuDNN(cudnn != 0);
  at::globalContext().setAllowTF32CuBLAS(cublas != 0);
}

}  // extern "C"

// Autocast state is per thread in libtorch. libtorch 2.4 made the accessors
// take a device type; before that CUDA and CPU had their own functions.
#if TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 4)
#define DP2O_AUTOCAST_BY_DEVICE 1
#endif

bool dp2o::autocast_enabled(at::DeviceType d) {
#ifdef DP2O_AUTOCAST_BY_DEVICE
  return at::autocast::is_autocast_enabled(d);
#else
  return d == at::kCPU ? at::autocast::is_cpu_enabled() : at::autocast::is_enabled();
#endif
}

void dp2o::set_autocast(at::DeviceType d, bool on, at::ScalarType dtype) {
#ifdef DP2O_AUTOCAST_BY_DEVICE
  at::autocast::set_autocast_enabled(d, on);
  at::autocast::set_autocast_dtype(d, dtype);
#else
  if (d == at::kCPU) {
    at::autocast::set_cpu_enabled(on);
    at::autocast::set_autocast_cpu_dtype(dtype);
  } else {
    at::autocast::set_enabled(on);
    at::autocast::set_autocast_gpu_dtype(dtype);
  }
#endif
}

at::ScalarType dp2o::autocast_dtype(at::DeviceType d) {
#ifdef DP2O_AUTOCAST_BY_DEVICE
  return at::autocast::get_autocast_dtype(d);
#else
  return d == at::kCPU ? at::autocast::get_autocast_cpu_dtype() : at::autocast::get_autocast_gpu_dtype();
#endif
}

extern "C" {

dp2o_err dp2o_autocast_enter(int device_type, int dtype, int *prev_enabled, int *prev_dtype) {
  DP2O_TRY
  auto d = static_cast<at::DeviceType>(device_type);
  TORCH_CHECK(d == at::kCPU || d == at::kCUDA, "autocast: unsupported device type ", d);
  *prev_enabled = dp2o::autocast_enabled(d) ? 1 : 0;
  *prev_dtype = static_cast<int>(dp2o::autocast_dtype(d));
  dp2o::set_autocast(d, true, static_cast<at::ScalarType>(dtype));
  at::autocast::increment_nesting();
  DP2O_CATCH
}

dp2o_err dp2o_autocast_exit(int device_type, int prev_enabled, int prev_dtype) {
  DP2O_TRY
  auto d = static_cast<at::DeviceType>(device_type);
  // As torch.autocast.__exit__: drop the cast cache when leaving the
  // outermost region, then restore the previous state.
  if (at::autocast::decrement_nesting() == 0) at::autocast::clear_cache();
  dp2o::set_autocast(d, prev_enabled != 0, static_cast<at::ScalarType>(prev_dtype));
  DP2O_CATCH
}

int dp2o_autocast_enabled(int device_type) { return dp2o::autocast_enabled(static_cast<at::DeviceType>(device_type)) ? 1 : 0; }


int dp2o_grad_enabled(void) { return c10::GradMode::is_enabled() ? 1 : 0; }
void dp2o_set_grad_enabled(int on) { c10::GradMode::set_enabled(on != 0); }

void dp2o_tensor_free(dp2o_tensor h) {
  if (!h) return;
  auto *o = dp2o::owned(h);
  dp2o::live_add(-1, -o->bytes);
  dp2o::owned_delete(o);
}

uintptr_t *dp2o_deferred_list(void) {
  static_assert(sizeof(std::atomic<uintptr_t>) == sizeof(uintptr_t), "the deferred list must look like a uintptr_t");
  return reinterpret_cast<uintptr_t *>(&dp2o::g_deferred);
}

void dp2o_drain_deferred(void) { dp2o::drain_deferred(); }

void dp2o_tensor_free_many(const uintptr_t *hs, int64_t n) {
  dp2o::drain_deferred();
  for (int64_t i = 0; i < n; i++) dp2o_tensor_free(hs[i]);
}

dp2o_err dp2o_tensor_from_data(const void *data, int64_t nbytes, const int64_t *shape, int ndim, int dtype,
                               dp2o_tensor *out) {
  DP2O_TRY
  auto st = static_cast<at::ScalarType>(dtype);
  at::Tensor t = at::empty(at::IntArrayRef(shape, ndim), at::TensorOptions().dtype(st));
  int64_t want = static_cast<int64_t>(t.numel()) * static_cast<int64_t>(t.element_size());
  TORCH_CHECK(want == nbytes, "from_data: ", nbytes, " bytes given for shape ", t.sizes(), " of ", st,
              " (", want, " bytes needed)");
  if (nbytes > 0) std::memcpy(t.data_ptr(), data, nbytes);
  *out = wrap(std::move(t));
  DP2O_CATCH
}

dp2o_err dp2o_tensor_copy_to(dp2o_tensor h, void *dst, int64_t nbytes) {
  DP2O_TRY
  at::Tensor t = T(h).detach().to(at::kCPU).contiguous();
  int64_t have = static_cast<int64_t>(t.numel()) * static_cast<int64_t>(t.element_size());
  TORCH_CHECK(have == nbytes, "copy_to: tensor holds ", have, " bytes, buffer has ", nbytes);
  if (nbytes > 0) std::memcpy(dst, t.data_ptr(), nbytes);
  DP2O_CATCH
}

int dp2o_tensor_ndim(dp2o_tensor h) { return static_cast<int>(T(h).dim()); }
void dp2o_tensor_shape(dp2o_tensor h, int64_t *dims) {
  auto s = T(h).sizes();
  for (size_t i = 0; i < s.size(); i++) dims[i] = s[i];
}
void dp2o_tensor_strides(dp2o_tensor h, int64_t *dims) {
  auto s = T(h).strides();
  for (size_t i = 0; i < s.size(); i++) dims[i] = s[i];
}
int dp2o_tensor_dtype(dp2o_tensor h) { return static_cast<int>(T(h).scalar_type()); }
void dp2o_tensor_device(dp2o_tensor h, int *type, int *index) {
  auto d = T(h).device();
  *type = static_cast<int>(d.type());
  *index = d.has_index() ? d.index() : (d.is_cuda() ? 0 : -1);
}
int64_t dp2o_tensor_numel(dp2o_tensor h) { return T(h).numel(); }
int dp2o_tensor_defined(dp2o_tensor h) { return T(h).defined() ? 1 : 0; }
int dp2o_tensor_is_contiguous(dp2o_tensor h) { return T(h).is_contiguous() ? 1 : 0; }
int dp2o_tensor_requires_grad(dp2o_tensor h) { return T(h).requires_grad() ? 1 : 0; }
int64_t dp2o_tensor_storage_offset(dp2o_tensor h) { return T(h).storage_offset(); }

dp2o_err dp2o_tensor_item(dp2o_tensor h, double *out) {
  DP2O_TRY
  *out = T(h).item<double>();
  DP2O_CATCH
}

dp2o_err dp2o_tensor_item_int(dp2o_tensor h, int64_t *out) {
  DP2O_TRY
  *out = T(h).item<int64_t>();
  DP2O_CATCH
}

dp2o_err dp2o_tensor_to_string(dp2o_tensor h, char **out) {
  DP2O_TRY
  std::ostringstream os;
  os << T(h);
  *out = dp2o::dup_err(os.str().c_str());
  DP2O_CATCH
}

dp2o_err dp2o_tensor_shallow_clone(dp2o_tensor h, dp2o_tensor *out) {
  DP2O_TRY
  *out = wrap(T(h));
  DP2O_CATCH
}

dp2o_err dp2o_tensor_set_requires_grad(dp2o_tensor h, int on) {
  DP2O_TRY
  T(h).requires_grad_(on != 0);
  DP2O_CATCH
}

dp2o_err dp2o_tensor_backward(dp2o_tensor h, dp2o_tensor grad, int retain_graph) {
  DP2O_TRY
  at::Tensor g;
  if (grad) g = T(grad);
  T(h).backward(g, retain_graph ? c10::optional<bool>(true) : c10::nullopt, false);
  DP2O_CATCH
}

dp2o_err dp2o_tensor_grad(dp2o_tensor h, dp2o_tensor *out) {
  DP2O_TRY
  const at::Tensor &g = T(h).grad();
  *out = g.defined() ? wrap(g) : 0;
  DP2O_CATCH
}

dp2o_err dp2o_tensor_zero_grad(dp2o_tensor h, int set_to_none) {
  DP2O_TRY
  at::Tensor &t = T(h);
  if (set_to_none) {
    t.mutable_grad() = at::Tensor();
  } else if (t.grad().defined()) {
    t.mutable_grad().detach_();
    t.mutable_grad().zero_();
  }
  DP2O_CATCH
}

dp2o_err dp2o_tensor_set_grad(dp2o_tensor h, dp2o_tensor grad) {
  DP2O_TRY
  if (grad) {
    // PyTorch's tensor.grad setter's checks: a gradient of another dtype,
    // device or size would fail (or corrupt memory) where it is used.
    const at::Tensor &t = T(h), &g = T(grad);
    TORCH_CHECK(g.scalar_type() == t.scalar_type() && g.device() == t.device(),
                "assigned grad has data of a different type or device: ", g.scalar_type(), " on ", g.device(),
                ", the tensor is ", t.scalar_type(), " on ", t.device());
    TORCH_CHECK(g.sizes() == t.sizes(), "assigned grad has data of a different size: ", g.sizes(), ", the tensor is ",
                t.sizes());
  }
  T(h).mutable_grad() = grad ? T(grad) : at::Tensor();
  DP2O_CATCH
}

dp2o_err dp2o_gen_new(int device_type, int device_index, uint64_t seed, dp2o_gen *out) {
  DP2O_TRY
  at::Generator g;
  if (device_type == static_cast<int>(c10::DeviceType::CPU)) {
    g = at::detail::createCPUGenerator(seed);
  } else if (device_type == static_cast<int>(c10::DeviceType::CUDA)) {
    TORCH_CHECK(at::detail::getCUDAHooks().hasCUDA(), "CUDA generator requested but CUDA is not available");
    // Context::defaultGenerator exists in libtorch 1.13 and 2.x alike (the
    // CUDA hooks renamed their accessor in 2.x).
    g = at::globalContext().defaultGenerator(at::Device(at::kCUDA, static_cast<at::DeviceIndex>(device_index))).clone();
    g.set_current_seed(seed);
  } else {
    TORCH_CHECK(false, "generator: unsupported device type ", device_type);
  }
  *out = new at::Generator(std::move(g));
  DP2O_CATCH
}

void dp2o_gen_free(dp2o_gen g) { delete static_cast<at::Generator *>(g); }

dp2o_err dp2o_gen_manual_seed(dp2o_gen g, uint64_t seed) {
  DP2O_TRY
  auto *gen = static_cast<at::Generator *>(g);
  std::lock_guard<std::mutex> lock(gen->mutex());
  gen->set_current_seed(seed);
  DP2O_CATCH
}

dp2o_err dp2o_gen_seed(dp2o_gen g, uint64_t *out) {
  DP2O_TRY
  *out = static_cast<at::Generator *>(g)->current_seed();
  DP2O_CATCH
}

dp2o_err dp2o_gen_get_state(dp2o_gen g, dp2o_tensor *out) {
  DP2O_TRY
  auto *gen = static_cast<at::Generator *>(g);
  std::lock_guard<std::mutex> lock(gen->mutex());
  *out = wrap(gen->get_state());
  DP2O_CATCH
}

dp2o_err dp2o_gen_set_state(dp2o_gen g, dp2o_tensor state) {
  DP2O_TRY
  auto *gen = static_cast<at::Generator *>(g);
  std::lock_guard<std::mutex> lock(gen->mutex());
  gen->set_state(T(state));
  DP2O_CATCH
}

dp2o_err dp2o_manual_seed(uint64_t seed) {
  DP2O_TRY
  auto gen = at::detail::getDefaultCPUGenerator();
  {
    std::lock_guard<std::mutex> lock(gen.mutex());
    gen.set_current_seed(seed);
  }
  if (at::detail::getCUDAHooks().hasCUDA()) {
    int n = at::detail::getCUDAHooks().getNumGPUs();
    for (int i = 0; i < n; i++) {
      auto g = at::globalContext().defaultGenerator(at::Device(at::kCUDA, static_cast<at::DeviceIndex>(i)));
      std::lock_guard<std::mutex> lock(g.mutex());
      g.set_current_seed(seed);
    }
  }
  DP2O_CATCH
}

}  // extern "C"
