// extra.cpp: kernels composed from several ATen calls, kept in C++ so that
// one cgo crossing does the whole thing, with PyTorch's exact semantics.
#include "shim.h"

#include <torch/version.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <string>

namespace dp2o {

// rms_norm follows diffusers' RMSNorm: the mean of squares in float32, the
// input scaled by its reciprocal square root, then cast to the weight's dtype
// when that is half precision, then multiplied by the weight.
at::Tensor rms_norm(const at::Tensor &x, const c10::optional<at::Tensor> &weight, double eps) {
  auto in_dtype = x.scalar_type();
  auto variance = x.to(at::kFloat).pow(2).mean({-1}, true);
  auto h = x * at::rsqrt(variance + eps);
  if (weight.has_value() && weight->defined()) {
    auto wt = weight->scalar_type();
    if (wt == at::kHalf || wt == at::kBFloat16) h = h.to(wt);
    return h * *weight;
  }
  return h.to(in_dtype);
}

// interpolate mirrors F.interpolate given an output size (no scale factors):
// mode 0 nearest, 1 bilinear, 2 bicubic, 3 nearest-exact.
at::Tensor interpolate(const at::Tensor &x, at::IntArrayRef size, int64_t mode, bool align_corners, bool antialias) {
  TORCH_CHECK(x.dim() == 4, "interpolate: expected a 4-d (N,C,H,W) input, got ", x.dim(), " dims");
  TORCH_CHECK(size.size() == 2, "interpolate: expected 2 output sizes, got ", size.size());
  TORCH_CHECK(size[0] > 0 && size[1] > 0, "interpolate: output size must be positive, got ", size);
  switch (mode) {
    case 0:
      TORCH_CHECK(!antialias, "interpolate: antialias is only for bilinear and bicubic");
      return at::upsample_nearest2d(x, size, c10::nullopt, c10::nullopt);
    case 3:
      TORCH_CHECK(!antialias, "interpolate: antialias is only for bilinear and bicubic");
      return at::_upsample_nearest_exact2d(x, size, c10::nullopt, c10::nullopt);
    case 1:
      if (antialias) return at::_upsample_bilinear2d_aa(x, size, align_corners, c10::nullopt, c10::nullopt);
      return at::upsample_bilinear2d(x, size, align_corners, c10::nullopt, c10::nullopt);
    case 2:
      if (antialias) return at::_upsample_bicubic2d_aa(x, size, align_corners, c10::nullopt, c10::nullopt);
      return at::upsample_bicubic2d(x, size, align_corners, c10::nullopt, c10::nullopt);
  }
  TORCH_CHECK(false, "interpolate: unknown mode ", mode);
}

// linear is F.linear and matmul is torch.matmul, with a kernel that does not
// depend on whether an operand requires grad. libtorch 2.x's matmul folds a
// (…, n) operand times a matrix into one mm when an operand requires grad,
// but without grad only when the fold needs no copy, and otherwise runs a
// broadcast bmm, which rounds differently: a frozen reference copy of a
// model being trained (DPO's, at step 0) would then differ from it in the
// last bits wherever a linear layer reads a strided view. A contiguous
// operand folds either way (libtorch 1.x always folds). Only strided
// tensors have a memory order to make contiguous.
at::Tensor linear(const at::Tensor &x, const at::Tensor &w, const c10::optional<at::Tensor> &b) {
  if (x.dim() > 2 && x.layout() == at::kStrided) return at::linear(x.contiguous(), w, b);
  return at::linear(x, w, b);
}

at::Tensor matmul(const at::Tensor &a, const at::Tensor &b) {
  if (a.dim() > 2 && b.dim() <= 2 && a.layout() == at::kStrided) return at::matmul(a.contiguous(), b);
  return at::matmul(a, b);
}

// max_pool2d is F.max_pool2d. A oneDNN (mkldnn) input goes straight to
// mkldnn_max_pool2d, which is what max_pool2d's composite kernel calls for it:
// where a libtorch also registers a Vulkan kernel for max_pool2d (Debian's
// 2.6), the dispatcher rejects an mkldnn tensor at the composite entry with an
// internal assert ("kernels registered to both CompositeImplicitAutograd and a
// backend mapped to AutogradOther").
//
// A dense, contiguous float32 CPU input that needs no gradient takes oneDNN's
// pooling too (reordered in and out): libtorch's max_pool2d is
// max_pool2d_with_indices, which also computes the argmax of every window,
// about five times slower on one thread than oneDNN for a stem's
// 64-channel map. The maxima are the same values, padding included (both
// ignore padded positions), except that oneDNN's max does not propagate a
// NaN: an input holding one keeps libtorch's kernel. DP2O_MKLDNN=0 turns the
// detour off, as for the Go backbones.
static bool pool_via_mkldnn(const at::Tensor &x, at::IntArrayRef kernel, at::IntArrayRef stride,
                            at::IntArrayRef padding) {
  // Explicit 2-d arguments only, and the padding libtorch accepts (at most
  // half the kernel); anything else gets libtorch's kernel and its checks.
  if (kernel.size() != 2 || stride.size() != 2 || padding.size() != 2) return false;
  for (int i = 0; i < 2; i++)
    if (padding[i] < 0 || 2 * padding[i] > kernel[i] || stride[i] < 1) return false;
  const char *e = std::getenv("DP2O_MKLDNN");
  return !(e != nullptr && std::string(e) == "0") && at::hasMKLDNN() && x.layout() == at::kStrided && x.device().is_cpu() &&
         x.scalar_type() == at::kFloat && x.dim() == 4 && !x.requires_grad() && x.is_contiguous() &&
         x.numel() > 0 && !std::isnan(x.max().item<float>());  // max propagates a NaN: one pass, no mask tensor
}

at::Tensor max_pool2d(const at::Tensor &x, at::IntArrayRef kernel, at::IntArrayRef stride, at::IntArrayRef padding) {
  if (x.is_mkldnn()) return at::mkldnn_max_pool2d(x, kernel, stride, padding);
  if (pool_via_mkldnn(x, kernel, stride, padding)) return at::mkldnn_max_pool2d(x.to_mkldnn(), kernel, stride, padding).to_dense();
  return at::max_pool2d(x, kernel, stride, padding);
}

// pad mirrors F.pad: mode 0 constant, 1 reflect, 2 replicate. pad lists
// (left, right, top, bottom, ...) from the last dimension backwards.
at::Tensor pad(const at::Tensor &x, at::IntArrayRef p, int64_t mode, double value) {
  TORCH_CHECK(p.size() % 2 == 0, "pad: padding length must be even, got ", p.size());
  if (mode == 0) return at::constant_pad_nd(x, p, value);
  int64_t n = static_cast<int64_t>(p.size()) / 2;
  TORCH_CHECK(n >= 1 && n <= 3, "pad: reflect/replicate pad 1 to 3 dims, got ", n);
  TORCH_CHECK(x.dim() == n + 1 || x.dim() == n + 2, "pad: ", n, "-d reflect/replicate padding needs a ", n + 1,
              "-d or ", n + 2, "-d input, got ", x.dim(), " dims");
  if (mode == 1) {
    if (n == 1) return at::reflection_pad1d(x, p);
    if (n == 2) return at::reflection_pad2d(x, p);
    return at::reflection_pad3d(x, p);
  }
  if (mode == 2) {
    if (n == 1) return at::replication_pad1d(x, p);
    if (n == 2) return at::replication_pad2d(x, p);
    return at::replication_pad3d(x, p);
  }
  TORCH_CHECK(false, "pad: unknown mode ", mode);
}

// sdpa is F.scaled_dot_product_attention: q (..., L, E), k (..., S, E),
// v (..., S, Ev). mask is boolean (true = attend) or additive. scale <= 0
// means 1/sqrt(E). With math (or on libtorch 1.x) it runs the exact reference
// order softmax(q·kᵀ·scale + mask)·v; otherwise libtorch's fused kernels.
// attention_chunk_bytes bounds the score block of sdpa_chunked (0: off):
// 4 MiB, or $DP2O_ATTENTION_CHUNK_BYTES.
int64_t attention_chunk_default() {
  const char *e = std::getenv("DP2O_ATTENTION_CHUNK_BYTES");
  if (e && *e) {
    char *end = nullptr;
    long long v = std::strtoll(e, &end, 10);
    if (end && *end == 0 && v >= 0) return v;
  }
  return 4 << 20;
}
std::atomic<int64_t> attention_chunk_bytes{attention_chunk_default()};

// sdpa_chunked is the math order of sdpa for q (N, L, E), k (N, S, E),
// v (N, S, Ev) without autograd, a block of query rows of one head at a
// time: the (rows, S) scores of a block stay in cache instead of a
// (N, L, S) tensor going through memory four times (and being allocated:
// 10 GiB for an SD2 VAE's mid-block at 1024² output). Each row's scores,
// softmax and output are computed by the same kernels as in the whole
// product.
at::Tensor sdpa_chunked(const at::Tensor &q, const at::Tensor &k, const at::Tensor &v, double s, int64_t rows) {
  const int64_t N = q.size(0), L = q.size(1), S = k.size(1);
  auto out = at::empty({N, L, v.size(2)}, q.options());
  // One scores and one probabilities buffer for every block.
  auto scores = at::empty({rows, S}, q.options());
  auto probs = at::empty({rows, S}, q.options());
  for (int64_t n = 0; n < N; n++) {
    auto kt = k.select(0, n).t();
    auto vn = v.select(0, n);
    auto qn = q.select(0, n);
    auto on = out.select(0, n);
    for (int64_t r = 0; r < L; r += rows) {
      int64_t c = std::min(rows, L - r);
      auto sc = scores.narrow(0, 0, c);
      auto p = probs.narrow(0, 0, c);
      auto dst = on.narrow(0, r, c);
      at::mm_out(sc, qn.narrow(0, r, c), kt);
      sc.mul_(s);
      at::_softmax_out(p, sc, -1, false);
      at::mm_out(dst, p, vn);
    }
  }
  return out;
}

at::Tensor sdpa(const at::Tensor &q, const at::Tensor &k, const at::Tensor &v, const c10::optional<at::Tensor> &mask,
                bool causal, double scale, bool math) {
  TORCH_CHECK(q.dim() >= 2 && k.dim() == q.dim() && v.dim() == q.dim(),
              "attention: q, k, v must have the same number of dims (>= 2), got ", q.sizes(), ", ", k.sizes(), ", ",
              v.sizes());
  TORCH_CHECK(q.size(-1) == k.size(-1), "attention: q and k head dims differ: ", q.sizes(), " vs ", k.sizes());
  TORCH_CHECK(k.size(-2) == v.size(-2), "attention: k and v lengths differ: ", k.sizes(), " vs ", v.sizes());
  double s = scale > 0 ? scale : 1.0 / std::sqrt(static_cast<double>(q.size(-1)));
#if TORCH_VERSION_MAJOR >= 2
  if (!math) {
#if TORCH_VERSION_MAJOR > 2 || TORCH_VERSION_MINOR >= 1
    return at::scaled_dot_product_attention(q, k, v, mask, 0.0, causal, s);
#else
    if (scale <= 0) return at::scaled_dot_product_attention(q, k, v, mask, 0.0, causal);
#endif
  }
#endif
  (void)math;
  // Inference on the CPU with a large float32/float64 score tensor: a
  // block of rows at a time (same leading dims, no mask), except where the
  // autograd path's kernels are asked for (a DPO reference must give the
  // policy's bits at step 0 on any BLAS). Reduced
  // precision is left whole: ATen's batched and single products of
  // bfloat16 differ in their accumulation.
  const int64_t chunk = attention_chunk_bytes.load(std::memory_order_relaxed);
  if (chunk > 0 && !plain_kernels() && !causal && !(mask.has_value() && mask->defined()) && q.dim() >= 3 &&
      q.device().is_cpu() &&
      k.device().is_cpu() && v.device().is_cpu() &&
      (q.scalar_type() == at::kFloat || q.scalar_type() == at::kDouble) &&
      k.scalar_type() == q.scalar_type() && v.scalar_type() == q.scalar_type() &&
      q.sizes().slice(0, q.dim() - 2) == k.sizes().slice(0, k.dim() - 2) &&
      q.sizes().slice(0, q.dim() - 2) == v.sizes().slice(0, v.dim() - 2) &&
      !(at::GradMode::is_enabled() && (q.requires_grad() || k.requires_grad() || v.requires_grad()))) {
    const int64_t L = q.size(-2), S = k.size(-2), elem = static_cast<int64_t>(q.element_size());
    const int64_t N = q.numel() > 0 && k.numel() > 0 ? q.numel() / (L * q.size(-1)) : 0;
    if (N > 0 && N * L * S * elem > chunk) {
      const int64_t rows = std::max<int64_t>(1, chunk / (S * elem));
      auto lead = q.sizes().slice(0, q.dim() - 2).vec();
      auto flat = [](const at::Tensor &t) { return t.reshape({-1, t.size(-2), t.size(-1)}); };
      auto o = sdpa_chunked(flat(q), flat(k), flat(v), s, std::min(rows, L));
      lead.push_back(L);
      lead.push_back(v.size(-1));
      return o.view(lead);
    }
  }
  auto scores = at::matmul(q, k.transpose(-2, -1)) * s;
  if (causal) {
    auto L = q.size(-2), S = k.size(-2);
    auto keep = at::ones({L, S}, q.options().dtype(at::kBool)).tril();
    scores = scores.masked_fill(keep.logical_not(), -std::numeric_limits<double>::infinity());
  }
  if (mask.has_value() && mask->defined()) {
    if (mask->scalar_type() == at::kBool) {
      scores = scores.masked_fill(mask->logical_not(), -std::numeric_limits<double>::infinity());
    } else {
      scores = scores + *mask;
    }
  }
  return at::matmul(at::softmax(scores, -1), v);
}

// clip_grad_norm is torch.nn.utils.clip_grad_norm_ (foreach=False): the total
// norm of all gradients, and every gradient scaled by
// clamp(max_norm / (total + 1e-6), max=1). Returns the total norm.
at::Tensor clip_grad_norm(std::vector<at::Tensor> params, double max_norm, double norm_type) {
  std::vector<at::Tensor> grads;
  for (auto &p : params)
    if (p.grad().defined()) grads.push_back(p.grad());
  if (grads.empty()) return at::zeros({}, at::kFloat);
  at::NoGradGuard ng;
  at::Tensor total;
  if (std::isinf(norm_type)) {
    std::vector<at::Tensor> norms;
    for (auto &g : grads) norms.push_back(g.detach().abs().max().to(grads[0].device()));
    total = norms.size() == 1 ? norms[0] : at::max(at::stack(norms));
  } else {
    std::vector<at::Tensor> norms;
    for (auto &g : grads) norms.push_back(at::norm(g.detach(), norm_type).to(grads[0].device()));
    total = at::norm(at::stack(norms), norm_type);
  }
  // Python's `max_norm / tensor` is tensor.reciprocal() * max_norm
  // (Tensor.__rtruediv__); C++'s operator/(double, Tensor) divides a filled
  // tensor instead, which can differ in the last bit.
  auto coef = (total + 1e-6).reciprocal() * max_norm;
  auto coef_clamped = at::clamp(coef, c10::nullopt, 1.0);
  for (auto &g : grads) g.detach().mul_(coef_clamped.to(g.device()));
  return total;
}

// adamw_step is one step of torch.optim.AdamW for one parameter, in the
// order of PyTorch 1.13's _single_tensor_adamw (amsgrad off, maximize off).
void adamw_step(const at::Tensor &param, const at::Tensor &grad, const at::Tensor &exp_avg, const at::Tensor &exp_avg_sq,
                int64_t step, double lr, double beta1, double beta2, double eps, double weight_decay) {
  at::NoGradGuard ng;
  at::Tensor p = param;
  at::Tensor m = exp_avg;
  at::Tensor v = exp_avg_sq;
  p.mul_(1 - lr * weight_decay);
  m.mul_(beta1).add_(grad, 1 - beta1);
  v.mul_(beta2).addcmul_(grad, grad, 1 - beta2);
  double bias_correction1 = 1 - std::pow(beta1, static_cast<double>(step));
  double bias_correction2 = 1 - std::pow(beta2, static_cast<double>(step));
  double step_size = lr / bias_correction1;
  double bias_correction2_sqrt = std::sqrt(bias_correction2);
  auto denom = (v.sqrt() / bias_correction2_sqrt).add_(eps);
  p.addcdiv_(m, denom, -step_size);
}

}  // namespace dp2o

extern "C" int64_t dp2o_set_attention_chunk_bytes(int64_t n) { return dp2o::attention_chunk_bytes.exchange(n < 0 ? 0 : n); }
