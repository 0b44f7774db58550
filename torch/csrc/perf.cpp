// perf.cpp: inference fast paths for the small CPU models (see perf.h).
//
// A libtorch linked to a reference BLAS (Debian's libtorch-dev with the
// generic libblas) runs at::linear / at::bmm through the textbook triple
// loop of sgemm_. libtorch also carries XNNPACK, whose fully-connected
// kernels it exposes as the prepacked::linear_clamp_prepack/_run ops; they
// compute the same products (in another summation order) several times
// faster. Those ops have no autograd, so they are only used where autograd
// records nothing: every other case takes the plain ATen path, in the exact
// order of the unfused code.
#include "shim.h"

#include <dlfcn.h>
#include <limits.h>
#include <stdlib.h>

#include <algorithm>
#include <cctype>

#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/EmptyTensor.h>
#include <ATen/core/stack.h>
#include <ATen/Parallel.h>
#include <ATen/ScalarOps.h>
#include <c10/core/CPUAllocator.h>

#include <cmath>
#include <mutex>

namespace dp2o {

namespace {

struct Xnn {
  c10::optional<c10::OperatorHandle> prepack, run;
  bool ok = false;
};

c10::IValue xnn_prepack(const Xnn &x, const at::Tensor &w, const c10::optional<at::Tensor> &b) {
  torch::jit::Stack st;
  st.reserve(4);
  st.emplace_back(w);
  if (b.has_value() && b->defined())
    st.emplace_back(*b);
  else
    st.emplace_back();
  st.emplace_back();  // output_min: none
  st.emplace_back();  // output_max: none
  x.prepack->callBoxed(&st);
  return std::move(st[0]);
}

at::Tensor xnn_run(const Xnn &x, const at::Tensor &in, c10::IValue ctx) {
  torch::jit::Stack st;
  st.reserve(2);
  st.emplace_back(in);
  st.emplace_back(std::move(ctx));
  x.run->callBoxed(&st);
  return st[0].toTensor();
}

}  // namespace

// blas_library is the file that provides the sgemm_ libtorch calls, as the
// dynamic linker resolves it (Debian: the libblas.so.3 alternative, the
// reference BLAS or OpenBLAS's); empty when no sgemm_ is visible.
const std::string &blas_library() {
  static const std::string path = [] {
    void *sym = dlsym(RTLD_DEFAULT, "sgemm_");
    Dl_info info;
    if (!sym || !dladdr(sym, &info) || !info.dli_fname) return std::string();
    char buf[PATH_MAX];
    if (realpath(info.dli_fname, buf)) return std::string(buf);
    return std::string(info.dli_fname);
  }();
  return path;
}

// optimized_blas reports whether that sgemm_ is an optimised one: OpenBLAS,
// MKL, BLIS, or a BLAS built into libtorch itself (the official builds
// link MKL statically).
bool optimized_blas() {
  static const bool v = [] {
    std::string p = blas_library();
    std::transform(p.begin(), p.end(), p.begin(), [](unsigned char c) { return std::tolower(c); });
    for (const char *lib : {"openblas", "mkl", "blis", "libtorch_cpu"})
      if (p.find(lib) != std::string::npos) return true;
    return false;
  }();
  return v;
}

namespace {

const Xnn &xnn() {
  static Xnn x;
  static std::once_flag once;
  std::call_once(once, [] {
    // The XNNPACK kernels pay only against a reference BLAS: with an
    // optimised one at::linear is as fast or faster (measured on the SD2
    // UNet step, README). DP2O_FAST_PATHS=0 turns them off, =1 on, whatever
    // the BLAS (to compare or debug).
    const char *e = std::getenv("DP2O_FAST_PATHS");
    std::string mode = e ? e : "";
    if (mode == "0" || (mode != "1" && optimized_blas())) return;
    try {
      auto &d = c10::Dispatcher::singleton();
      x.prepack = d.findSchema({"prepacked::linear_clamp_prepack", ""});
      x.run = d.findSchema({"prepacked::linear_clamp_run", ""});
      if (!x.prepack || !x.run) return;
      // Probe once: the ops exist but XNNPACK may be unusable on this CPU.
      at::NoGradGuard ng;
      auto in = at::arange(12, at::kFloat).reshape({3, 4}).div_(7);
      auto w = at::arange(20, at::kFloat).reshape({5, 4}).div_(11);
      auto b = at::arange(5, at::kFloat);
      auto got = xnn_run(x, in, xnn_prepack(x, w, b));
      x.ok = got.sizes() == at::IntArrayRef({3, 5}) && at::allclose(got, at::linear(in, w, b), 1e-5, 1e-6);
    } catch (...) {
      x.ok = false;
    }
  });
  return x;
}

// fast_paths_off is set on a thread by dp2o_set_fast_paths: a region that
// must use the plain ATen kernels (the same ones as the autograd path).
thread_local bool fast_paths_off = false;

// fast_ok: float32 CPU strided tensors on which autograd records nothing,
// with one intra-op thread. With more, XNNPACK would split its work over
// its own thread pool beside ATen's OpenMP team, whose workers spin after
// each parallel region: on a machine with few free cores the pool's
// workers then wait for a time slice (milliseconds) on every call.
bool fast_ok(std::initializer_list<const at::Tensor *> ts) {
  if (fast_paths_off || !xnn().ok || at::get_num_threads() != 1) return false;
  bool grad = at::GradMode::is_enabled();
  for (const at::Tensor *t : ts) {
    if (!t || !t->defined()) continue;
    if (t->device().type() != at::kCPU || t->scalar_type() != at::kFloat || t->layout() != at::kStrided) return false;
    if (grad && t->requires_grad()) return false;
    if (t->_fw_grad(0).defined()) return false;
  }
  return true;
}

// empty_padded allocates a float32 CPU tensor with the allocator XNNPACK
// expects (tail padding), so that the kernels read it without a copy.
at::Tensor empty_padded(at::IntArrayRef size) {
  return at::detail::empty_generic(size, c10::GetDefaultMobileCPUAllocator(), c10::DispatchKeySet(c10::DispatchKey::CPU),
                                   at::kFloat, c10::nullopt);
}

// wrapped_scalar is a Python number as ATen sees it in tensor·number.
at::Tensor wrapped_scalar(double v) {
  auto t = c10::scalar_to_tensor(v);
  t.unsafeGetTensorImpl()->set_wrapped_number(true);
  return t;
}

const at::Tensor *opt_ptr(const c10::optional<at::Tensor> &t) { return t.has_value() ? &*t : nullptr; }

// finite reports whether a contiguous float32 tensor holds no inf or NaN.
// XNNPACK clamps its outputs to [-inf, inf], which turns a NaN into -inf;
// the fast paths check their products with this and, where one is not
// finite, redo the op on the plain path, so that special values come out
// as PyTorch's ops give them.
#if defined(__GNUC__) && !defined(__clang__)
__attribute__((optimize("O3")))  // vectorise the scan
#endif
bool finite(const at::Tensor &t) {
  TORCH_INTERNAL_ASSERT(t.scalar_type() == at::kFloat && t.is_contiguous());
  const uint32_t *p = static_cast<const uint32_t *>(t.data_ptr());
  const int64_t n = t.numel();
  // An all-ones exponent (inf, NaN) carries into bit 31 when 1 is added
  // to the exponent field; no finite value does.
  uint32_t acc = 0;
  for (int64_t i = 0; i < n; i++) acc |= (p[i] & 0x7f800000u) + 0x00800000u;
  return (acc & 0x80000000u) == 0;
}

// xlinear is F.linear through XNNPACK; the caller checked fast_ok. The
// tensors are detached (XNNPACK refuses tensors that require grad, even
// when grad mode is off).
at::Tensor xlinear(const at::Tensor &x, const at::Tensor &w, const c10::optional<at::Tensor> &b) {
  const Xnn &X = xnn();
  int64_t in = w.size(1), out = w.size(0);
  c10::optional<at::Tensor> bd;
  if (b.has_value() && b->defined()) bd = b->detach();
  auto ctx = xnn_prepack(X, w.detach(), bd);
  at::Tensor x2 = x.dim() == 2 ? x.detach() : x.detach().reshape({-1, in});
  at::Tensor y = xnn_run(X, x2, std::move(ctx));
  if (x.dim() != 2) {
    auto sz = x.sizes().vec();
    sz.back() = out;
    y = y.view(sz);
  }
  return y;
}

bool linear_shapes_ok(const at::Tensor &x, const at::Tensor &w, const c10::optional<at::Tensor> &b) {
  if (w.dim() != 2 || x.dim() < 2 || x.size(-1) != w.size(1) || x.numel() == 0 || w.numel() == 0) return false;
  if (b.has_value() && b->defined() && (b->dim() != 1 || b->size(0) != w.size(0))) return false;
  return true;
}

// attention_ref is the unfused order: the projections, the heads split as
// (B, heads, L, d), dp2o::sdpa's math order, the heads merged, to_out.
at::Tensor attention_ref(const at::Tensor &x, const at::Tensor &ctx, const at::Tensor &wq, const at::Tensor &wk,
                         const at::Tensor &wv, const at::Tensor &wo, const c10::optional<at::Tensor> &bo,
                         int64_t heads) {
  int64_t B = x.size(0), d = wq.size(0) / heads;
  auto split = [&](const at::Tensor &t) { return t.view({B, -1, heads, d}).transpose(1, 2); };
  at::Tensor o;
  {  // q, k, v are freed before the output projection
    auto q = split(dp2o::linear(x, wq, c10::nullopt));
    auto k = split(dp2o::linear(ctx, wk, c10::nullopt));
    auto v = split(dp2o::linear(ctx, wv, c10::nullopt));
    o = sdpa(q, k, v, c10::nullopt, false, 0, true);
  }
  o = o.transpose(1, 2).reshape({B, -1, heads * d});
  return dp2o::linear(o, wo, bo);
}

}  // namespace

bool fast_path_available() { return xnn().ok; }

bool plain_kernels() { return fast_paths_off; }

at::Tensor fast_linear(const at::Tensor &x, const at::Tensor &w, const c10::optional<at::Tensor> &b) {
  if (linear_shapes_ok(x, w, b) && fast_ok({&x, &w, opt_ptr(b)})) {
    auto y = xlinear(x, w, b);
    if (finite(y)) return y;
  }
  return dp2o::linear(x, w, b);
}

at::Tensor attention(const at::Tensor &x, const c10::optional<at::Tensor> &ctx_opt, const at::Tensor &wq,
                     const at::Tensor &wk, const at::Tensor &wv, const at::Tensor &wo,
                     const c10::optional<at::Tensor> &bo, int64_t heads) {
  bool self = !ctx_opt.has_value() || !ctx_opt->defined();
  const at::Tensor &ctx = self ? x : *ctx_opt;
  TORCH_CHECK(x.dim() == 3 && ctx.dim() == 3 && x.size(0) == ctx.size(0),
              "attention: x must be (B, L, C) and ctx (B, S, Ck), got ", x.sizes(), " and ", ctx.sizes());
  TORCH_CHECK(heads > 0 && wq.dim() == 2 && wq.size(0) % heads == 0, "attention: ", wq.sizes(),
              " query weight does not split into ", heads, " heads");
  TORCH_CHECK(wk.dim() == 2 && wv.dim() == 2 && wk.size(0) == wq.size(0) && wv.size(0) == wq.size(0) &&
                  wq.size(1) == x.size(2) && wk.size(1) == ctx.size(2) && wv.size(1) == ctx.size(2),
              "attention: weights ", wq.sizes(), ", ", wk.sizes(), ", ", wv.sizes(), " do not fit x ", x.sizes(),
              " and ctx ", ctx.sizes());
  bool fast = x.numel() > 0 && ctx.numel() > 0 && wo.dim() == 2 && wo.size(1) == wq.size(0) &&
              fast_ok({&x, &ctx, &wq, &wk, &wv, &wo, opt_ptr(bo)});
  if (!fast) return attention_ref(x, ctx, wq, wk, wv, wo, bo, heads);

  const int64_t B = x.size(0), L = x.size(1), S = ctx.size(1), I = wq.size(0), d = I / heads;
  const double scale = 1.0 / std::sqrt(static_cast<double>(d));
  at::Tensor q, k, v;
  // One projection for the inputs that share a source.
  if (self) {
    auto qkv = xlinear(x, at::cat({wq.detach(), wk.detach(), wv.detach()}, 0), c10::nullopt);
    if (!finite(qkv)) return attention_ref(x, ctx, wq, wk, wv, wo, bo, heads);
    q = qkv.narrow(-1, 0, I), k = qkv.narrow(-1, I, I), v = qkv.narrow(-1, 2 * I, I);
  } else {
    q = xlinear(x, wq, c10::nullopt);
    auto kv = xlinear(ctx, at::cat({wk.detach(), wv.detach()}, 0), c10::nullopt);
    if (!finite(q) || !finite(kv)) return attention_ref(x, ctx, wq, wk, wv, wo, bo, heads);
    k = kv.narrow(-1, 0, I), v = kv.narrow(-1, I, I);
  }
  const Xnn &X = xnn();
  // The query heads, scaled, as (B, heads, L, d) in padded memory so that
  // XNNPACK reads them in place: softmax(q·kᵀ·s) = softmax((q·s)·kᵀ).
  auto qs = empty_padded({B, heads, L, d});
  at::mul_out(qs, q.view({B, L, heads, d}).permute({0, 2, 1, 3}), wrapped_scalar(scale));
  auto p = empty_padded({L, S});  // the probabilities of one head
  auto o = empty_padded({B, L, I});
  for (int64_t b = 0; b < B; b++) {
    for (int64_t h = 0; h < heads; h++) {
      // k and vᵀ of the head are the "weights" of the two products;
      // prepacking copies them into XNNPACK's layout.
      auto kh = k.select(0, b).narrow(-1, h * d, d);                                      // (S, d)
      auto scores = xnn_run(X, qs.select(0, b).select(0, h), xnn_prepack(X, kh, c10::nullopt));  // (L, S)
      at::_softmax_out(p, scores, -1, false);
      scores.reset();
      auto vt = v.select(0, b).narrow(-1, h * d, d).t();               // (d, S)
      auto oh = xnn_run(X, p, xnn_prepack(X, vt, c10::nullopt));       // (L, d)
      o.select(0, b).narrow(-1, h * d, d).copy_(oh);
    }
  }
  auto out = xlinear(o, wo, bo);
  if (!finite(out)) return attention_ref(x, ctx, wq, wk, wv, wo, bo, heads);
  return out;
}

at::Tensor geglu_ff(const at::Tensor &x, const at::Tensor &w1, const c10::optional<at::Tensor> &b1,
                    const at::Tensor &w2, const c10::optional<at::Tensor> &b2) {
  auto ref = [&] {
    at::Tensor h;
    {  // the 8·dim-wide projection is freed before the output projection
      auto p = dp2o::linear(x, w1, b1);
      auto parts = p.chunk(2, -1);
      auto g = at::gelu(parts[1]);
      h = parts[0] * g;
    }
    return dp2o::linear(h, w2, b2);
  };
  bool fast = linear_shapes_ok(x, w1, b1) && w1.size(0) % 2 == 0 && w2.dim() == 2 && w2.size(1) * 2 == w1.size(0) &&
              fast_ok({&x, &w1, opt_ptr(b1), &w2, opt_ptr(b2)});
  if (!fast) return ref();
  int64_t inner = w1.size(0) / 2;
  auto p = xlinear(x, w1, b1);
  if (!finite(p)) return ref();
  auto sz = p.sizes().vec();
  sz.back() = inner;
  auto g = empty_padded(sz);
  at::gelu_out(g, p.narrow(-1, inner, inner));
  g.mul_(p.narrow(-1, 0, inner));  // a·gelu(gate), in g's storage
  p.reset();
  auto out = xlinear(g, w2, b2);
  if (!finite(out)) return ref();
  return out;
}

}  // namespace dp2o

extern "C" {

// dp2o_set_fast_paths turns the XNNPACK fast paths on (1) or off (0) on the
// calling OS thread and returns the previous setting.
int dp2o_set_fast_paths(int on) {
  int prev = dp2o::fast_paths_off ? 0 : 1;
  dp2o::fast_paths_off = on == 0;
  return prev;
}
}
