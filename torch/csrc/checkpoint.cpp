// checkpoint.cpp: activation checkpointing (torch.utils.checkpoint with
// use_reentrant=True) as a libtorch custom autograd Function whose forward
// and recomputation call back into Go.
#include <ATen/autocast_mode.h>
#include <torch/csrc/autograd/autograd.h>
#include <torch/csrc/autograd/custom_function.h>

#include <mutex>

#include "shim.h"

namespace dp2o {
namespace {

dp2o_ckpt_fn g_ckpt_fn = nullptr;

// Identifiers of the Go functions whose node is gone, for Go to forget.
std::mutex g_released_mu;
std::vector<uint64_t> g_released;

// Token lives in the node's context: when autograd frees the node (after
// the backward pass, or with the graph), the Go function is released.
struct Token : torch::CustomClassHolder {
  explicit Token(uint64_t id) : id(id) {}
  ~Token() override {
    std::lock_guard<std::mutex> lock(g_released_mu);
    g_released.push_back(id);
  }
  uint64_t id;
};

// AutocastState is one thread's autocast settings, captured at the forward
// pass and put back for the recomputation (as torch.utils.checkpoint
// re-enters torch.autocast in backward).
struct AutocastState {
  bool cuda = false, cpu = false;
  at::ScalarType cuda_dtype = at::kHalf, cpu_dtype = at::kBFloat16;

  static AutocastState capture() {
    AutocastState s;
    s.cuda = autocast_enabled(at::kCUDA);
    s.cpu = autocast_enabled(at::kCPU);
    s.cuda_dtype = autocast_dtype(at::kCUDA);
    s.cpu_dtype = autocast_dtype(at::kCPU);
    return s;
  }
  void apply() const {
    set_autocast(at::kCUDA, cuda, cuda_dtype);
    set_autocast(at::kCPU, cpu, cpu_dtype);
  }
};

// AutocastScope puts a captured state on the thread and restores the
// thread's own at exit, dropping the cast cache when it leaves the
// outermost autocast region (as torch.autocast.__exit__).
struct AutocastScope {
  explicit AutocastScope(const AutocastState &s) : prev(AutocastState::capture()), on(s.cuda || s.cpu) {
    s.apply();
    if (on) at::autocast::increment_nesting();
  }
  ~AutocastScope() {
    if (on && at::autocast::decrement_nesting() == 0) at::autocast::clear_cache();
    prev.apply();
  }
  AutocastState prev;
  bool on;
};

// FastPathsOff runs the CPU fast paths' plain kernels for its extent: the
// forward pass (under no_grad) must compute the values the recomputation
// (under grad) will, and the fast paths are only taken without autograd.
struct FastPathsOff {
  FastPathsOff() : prev(dp2o_set_fast_paths(0)) {}
  ~FastPathsOff() { dp2o_set_fast_paths(prev); }
  int prev;
};

// run calls the Go function id on inputs and returns its outputs.
std::vector<at::Tensor> run(uint64_t id, const std::vector<at::Tensor> &inputs) {
  TORCH_CHECK(g_ckpt_fn != nullptr, "checkpoint: no callback registered");
  dp2o_ckpt_call call;
  call.inputs = &inputs;
  std::vector<at::Tensor> outputs;
  call.outputs = &outputs;
  FastPathsOff plain;
  char *err = g_ckpt_fn(id, &call);
  if (err) {
    std::string msg(err);
    std::free(err);
    TORCH_CHECK(false, msg);
  }
  return outputs;
}

struct Checkpoint : torch::autograd::Function<Checkpoint> {
  static torch::autograd::variable_list forward(torch::autograd::AutogradContext *ctx,
                                                at::TensorList input_list, int64_t id) {
    std::vector<at::Tensor> inputs = input_list.vec();
    ctx->saved_data["token"] = c10::IValue::make_capsule(c10::make_intrusive<Token>(static_cast<uint64_t>(id)));
    ctx->saved_data["id"] = id;
    auto ac = AutocastState::capture();
    ctx->saved_data["cuda"] = ac.cuda;
    ctx->saved_data["cpu"] = ac.cpu;
    ctx->saved_data["cuda_dtype"] = static_cast<int64_t>(ac.cuda_dtype);
    ctx->saved_data["cpu_dtype"] = static_cast<int64_t>(ac.cpu_dtype);
    ctx->save_for_backward(inputs);
    // An output nothing reads gets no gradient (not zeros): the
    // recomputation then back-propagates only what the plain backward pass
    // would, so weights behind unread outputs get no gradient, as without
    // checkpointing (PyTorch's reentrant checkpoint gives them zeros, which
    // AdamW's weight decay then acts on).
    ctx->set_materialize_grads(false);
    auto out = run(static_cast<uint64_t>(id), inputs);
    for (size_t i = 0; i < out.size(); i++) {
      TORCH_CHECK(out[i].defined(), "checkpoint: output ", i, " is undefined");
      if (!at::isFloatingType(out[i].scalar_type()) && !at::isComplexType(out[i].scalar_type()))
        ctx->mark_non_differentiable({out[i]});
    }
    return out;
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext *ctx,
                                                 torch::autograd::variable_list grads) {
    auto saved = ctx->get_saved_variables();
    uint64_t id = static_cast<uint64_t>(ctx->saved_data["id"].toInt());
    AutocastState ac;
    ac.cuda = ctx->saved_data["cuda"].toBool();
    ac.cpu = ctx->saved_data["cpu"].toBool();
    ac.cuda_dtype = static_cast<at::ScalarType>(ctx->saved_data["cuda_dtype"].toInt());
    ac.cpu_dtype = static_cast<at::ScalarType>(ctx->saved_data["cpu_dtype"].toInt());

    std::vector<at::Tensor> detached;
    detached.reserve(saved.size());
    for (size_t i = 0; i < saved.size(); i++) {
      auto d = saved[i].detach();
      if (ctx->needs_input_grad(i)) d.requires_grad_(true);
      detached.push_back(d);
    }
    std::vector<at::Tensor> outs;
    {
      at::AutoGradMode grad(true);
      AutocastScope autocast(ac);
      outs = run(id, detached);
    }
    TORCH_CHECK(outs.size() == grads.size(), "checkpoint: the recomputation gave ", outs.size(),
                " outputs, the forward pass ", grads.size(), " (the function must be deterministic)");
    std::vector<at::Tensor> with_grad, their_grads;
    for (size_t i = 0; i < outs.size(); i++) {
      if (outs[i].requires_grad() && grads[i].defined()) {
        with_grad.push_back(outs[i]);
        their_grads.push_back(grads[i]);
      }
    }
    if (!with_grad.empty()) torch::autograd::backward(with_grad, their_grads);
    torch::autograd::variable_list res;
    res.reserve(detached.size() + 1);
    for (auto &d : detached) res.push_back(d.requires_grad() ? d.grad() : at::Tensor());
    res.emplace_back();  // the function's id
    return res;
  }
};

}  // namespace
}  // namespace dp2o

using dp2o::T;
using dp2o::wrap;

extern "C" {

void dp2o_ckpt_set_callback(dp2o_ckpt_fn fn) { dp2o::g_ckpt_fn = fn; }

int dp2o_ckpt_released(uint64_t *ids, int max) {
  std::lock_guard<std::mutex> lock(dp2o::g_released_mu);
  int n = 0;
  while (n < max && !dp2o::g_released.empty()) {
    ids[n++] = dp2o::g_released.back();
    dp2o::g_released.pop_back();
  }
  return n;
}

dp2o_err dp2o_checkpoint(uint64_t id, const dp2o_tensor *inputs, int n, dp2o_tensor *outputs, int max_out,
                         int *n_out) {
  DP2O_TRY
  torch::autograd::variable_list in;
  in.reserve(n);
  for (int i = 0; i < n; i++) in.push_back(T(inputs[i]));
  // As a TensorList: autograd's argument scan takes a vector for a
  // non-tensor argument.
  auto out = dp2o::Checkpoint::apply(at::TensorList(in), static_cast<int64_t>(id));
  TORCH_CHECK(static_cast<int>(out.size()) <= max_out, "checkpoint: ", out.size(), " outputs, room for ", max_out);
  for (size_t i = 0; i < out.size(); i++) outputs[i] = wrap(out[i]);
  *n_out = static_cast<int>(out.size());
  DP2O_CATCH
}

int dp2o_ckpt_num_inputs(const dp2o_ckpt_call *c) {
  return static_cast<int>(static_cast<const std::vector<at::Tensor> *>(c->inputs)->size());
}

dp2o_tensor dp2o_ckpt_input(const dp2o_ckpt_call *c, int i) {
  return wrap((*static_cast<const std::vector<at::Tensor> *>(c->inputs))[i]);
}

void dp2o_ckpt_add_output(dp2o_ckpt_call *c, dp2o_tensor t) {
  static_cast<std::vector<at::Tensor> *>(c->outputs)->push_back(T(t));
}

}  // extern "C"
