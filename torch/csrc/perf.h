// perf.h: inference fast paths used by the op table torch/ops/perf.def
// (defined in perf.cpp). shim.h includes this header when it is present.
#pragma once

#include <ATen/ATen.h>

#include <string>

#include <string>

namespace dp2o {

// fast_linear is F.linear. Where autograd records nothing and the tensors
// are float32 on the CPU, it runs through libtorch's XNNPACK kernels
// (prepacked::linear_clamp_*), which on a libtorch linked to a reference
// BLAS are several times faster than at::linear; otherwise at::linear.
at::Tensor fast_linear(const at::Tensor &x, const at::Tensor &w, const c10::optional<at::Tensor> &b);

// attention is diffusers' Attention (AttnProcessor, math order): the
// projections to_q/to_k/to_v (no bias), softmax(q·kᵀ/√d)·v per head, then
// to_out.0 (bias may be nil). x is (B, L, C); ctx (B, S, Ck) or nil for
// self-attention. The fast path needs what fast_linear needs; otherwise it
// runs at::linear and dp2o::sdpa's math order.
at::Tensor attention(const at::Tensor &x, const c10::optional<at::Tensor> &ctx, const at::Tensor &wq,
                     const at::Tensor &wk, const at::Tensor &wv, const at::Tensor &wo,
                     const c10::optional<at::Tensor> &bo, int64_t heads);

// geglu_ff is diffusers' FeedForward with GEGLU: proj (x·w1ᵀ + b1) split
// into a and gate, a·gelu(gate), then ·w2ᵀ + b2.
at::Tensor geglu_ff(const at::Tensor &x, const at::Tensor &w1, const c10::optional<at::Tensor> &b1,
                    const at::Tensor &w2, const c10::optional<at::Tensor> &b2);

// fast_path reports whether fast_linear's XNNPACK path is available.
bool fast_path_available();

// plain_kernels reports whether the calling thread is in a region that must
// compute with the kernels of the autograd path (dp2o_set_fast_paths(0):
// torch.PlainKernels, a checkpointed function's forward pass).
bool plain_kernels();

// blas_library is the real path of the library whose sgemm_ libtorch calls
// ("" when none is visible); optimized_blas reports whether it is an
// optimised BLAS (then the XNNPACK paths are off: they do not pay).
const std::string &blas_library();
bool optimized_blas();

}  // namespace dp2o
