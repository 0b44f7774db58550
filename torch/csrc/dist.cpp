// dist.cpp: libtorch's distributed engine (c10d) behind dist.h.
//
// What is compiled in follows what the headers provide, so the shim builds
// against any libtorch and a missing backend is an error at use:
//   - c10d itself: torch/csrc/distributed/c10d/ProcessGroup.hpp;
//   - Gloo: its c10d header and Gloo's own headers (Debian: libgloo-dev);
//   - NCCL: a CUDA build (DP2O_CUDA), its c10d header and nccl.h.
// libtorch 1.x implements the collectives on c10d::ProcessGroup subclasses;
// 2.x moved them to c10d::Backend (ProcessGroup became a dispatcher over
// backends), with the same collective signatures, so the group holds the
// backend object directly on 2.x.
#include "shim.h"
#include "dist.h"

#include <torch/version.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <deque>
#include <map>
#include <tuple>
#include <string>

#if __has_include(<torch/csrc/distributed/c10d/ProcessGroup.hpp>)
#define DP2O_C10D 1
#include <torch/csrc/distributed/c10d/FileStore.hpp>
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroup.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#include <torch/csrc/autograd/function.h>
#include <torch/csrc/autograd/utils/lambda_post_hook.h>
#include <torch/csrc/autograd/variable.h>

#include <memory>
#include <mutex>
#if TORCH_VERSION_MAJOR >= 2
#include <torch/csrc/distributed/c10d/Backend.hpp>
#endif

#if __has_include(<torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>) && __has_include(<gloo/context.h>)
#ifndef USE_C10D_GLOO
#define USE_C10D_GLOO 1
#endif
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#define DP2O_GLOO 1
#endif

#if defined(DP2O_CUDA) && __has_include(<torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>) && __has_include(<nccl.h>)
#ifndef USE_C10D_NCCL
#define USE_C10D_NCCL 1
#endif
#include <c10/cuda/CUDAFunctions.h>
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
#define DP2O_NCCL 1
#endif
#endif  // c10d headers

extern "C" void dp2o_dist_backends(char *buf, int n) {
  std::string s;
#ifdef DP2O_GLOO
  s += "gloo";
#endif
#ifdef DP2O_NCCL
  if (!s.empty()) s += ",";
  s += "nccl";
#endif
  std::snprintf(buf, n, "%s", s.c_str());
}

#ifndef DP2O_C10D

// No c10d headers: every entry point says so.
#define DP2O_NO_C10D return dp2o::dup_err("dist: this libtorch has no distributed engine (c10d headers not found at build time)")
extern "C" {
dp2o_err dp2o_dist_tcp_store(const char *, int, int, int, int64_t, dp2o_store *) { DP2O_NO_C10D; }
dp2o_err dp2o_dist_file_store(const char *, int, int64_t, dp2o_store *) { DP2O_NO_C10D; }
dp2o_err dp2o_dist_store_set(dp2o_store, const char *, const void *, int64_t) { DP2O_NO_C10D; }
dp2o_err dp2o_dist_store_get(dp2o_store, const char *, void **, int64_t *) { DP2O_NO_C10D; }
void dp2o_dist_store_free(dp2o_store) {}
dp2o_err dp2o_dist_group_new(dp2o_store, const char *, const char *, int, int, int64_t, const char *, const char *,
                             int, dp2o_group *) {
  DP2O_NO_C10D;
}
void dp2o_dist_group_free(dp2o_group) {}
dp2o_err dp2o_dist_all_reduce(dp2o_group, dp2o_tensor *, int, int, int64_t) { DP2O_NO_C10D; }
dp2o_err dp2o_dist_broadcast(dp2o_group, dp2o_tensor *, int, int, int64_t) { DP2O_NO_C10D; }
dp2o_err dp2o_dist_all_gather(dp2o_group, dp2o_tensor, int64_t, dp2o_tensor **, int *) { DP2O_NO_C10D; }
dp2o_err dp2o_dist_barrier(dp2o_group, int64_t) { DP2O_NO_C10D; }
dp2o_err dp2o_dist_broadcast_coalesced(dp2o_group, dp2o_tensor *, int, int, int64_t, int64_t) { DP2O_NO_C10D; }
dp2o_err dp2o_dist_average_gradients(dp2o_group, dp2o_tensor *, int, int64_t, int64_t, int, int *) { DP2O_NO_C10D; }
dp2o_err dp2o_dist_reducer_new(dp2o_group, dp2o_tensor *, int, int64_t, dp2o_reducer *, int *) { DP2O_NO_C10D; }
dp2o_err dp2o_dist_reducer_prepare(dp2o_reducer, int, int64_t) { DP2O_NO_C10D; }
dp2o_err dp2o_dist_reducer_finish(dp2o_reducer, int64_t, int, int *, int *) { DP2O_NO_C10D; }
dp2o_err dp2o_dist_reducer_shard(dp2o_reducer, const int *, int, int *) { DP2O_NO_C10D; }
dp2o_err dp2o_dist_reducer_peak_buffers(dp2o_reducer, int *) { DP2O_NO_C10D; }
void dp2o_dist_reducer_free(dp2o_reducer) {}
}

#else

namespace dp2o {
namespace dist {

#if TORCH_VERSION_MAJOR >= 2
using PG = c10d::Backend;
#else
using PG = c10d::ProcessGroup;
#endif

struct Store {
  c10::intrusive_ptr<c10d::Store> s;
};

struct Group {
  c10::intrusive_ptr<c10d::Store> store;
  c10::intrusive_ptr<PG> pg;
  std::string backend;
  int rank = 0;
  int size = 1;
  std::chrono::milliseconds timeout{0};
};

inline Group &G(dp2o_group h) {
  TORCH_CHECK(h != nullptr, "dist: use of a closed group");
  return *static_cast<Group *>(h);
}

inline std::chrono::milliseconds timeout_of(const Group &g, int64_t ms) {
  return ms > 0 ? std::chrono::milliseconds(ms) : g.timeout;
}

// Waits for a collective and names it, the backend and the rank in the
// error. Work::wait(timeout) throws when the timeout passes first.
void wait(const Group &g, const char *what, const c10::intrusive_ptr<c10d::Work> &work,
          std::chrono::milliseconds timeout) {
  try {
    work->wait(timeout);
  } catch (const c10::Error &e) {
    TORCH_CHECK(false, "dist: ", what, " (", g.backend, ", rank ", g.rank, " of ", g.size, ", timeout ",
                timeout.count(), " ms): ", e.what_without_backtrace());
  } catch (const std::exception &e) {
    TORCH_CHECK(false, "dist: ", what, " (", g.backend, ", rank ", g.rank, " of ", g.size, ", timeout ",
                timeout.count(), " ms): ", e.what());
  }
}

void check_tensor(const Group &g, const at::Tensor &t, const char *what) {
  TORCH_CHECK(t.defined(), "dist: ", what, ": undefined tensor");
  TORCH_CHECK(t.is_contiguous(), "dist: ", what, ": tensor must be contiguous");
  if (g.backend == "nccl") {
    TORCH_CHECK(t.is_cuda(), "dist: ", what, ": an NCCL group needs CUDA tensors, got ", t.device());
  }
}

c10d::ReduceOp reduce_op(int op) {
  switch (op) {
    case 0:
    case 1:
      return c10d::ReduceOp(c10d::ReduceOp::SUM);
    case 2:
      return c10d::ReduceOp(c10d::ReduceOp::MAX);
    case 3:
      return c10d::ReduceOp(c10d::ReduceOp::MIN);
  }
  TORCH_CHECK(false, "dist: unknown reduce op ", op);
  return c10d::ReduceOp(c10d::ReduceOp::SUM);
}

// Average is a sum followed by a division, which every backend can do
// (Gloo has no AVG); integer tensors cannot be averaged in place.
void check_average(const at::Tensor &t) {
  TORCH_CHECK(at::isFloatingType(t.scalar_type()) || at::isComplexType(t.scalar_type()),
              "dist: average of a ", t.scalar_type(), " tensor (only floating types can be averaged in place)");
}

c10::intrusive_ptr<c10d::Work> all_reduce_async(Group &g, std::vector<at::Tensor> &ts, int op,
                                               std::chrono::milliseconds timeout) {
  c10d::AllreduceOptions o;
  o.reduceOp = reduce_op(op);
  o.timeout = timeout;
  return g.pg->allreduce(ts, o);
}

c10::intrusive_ptr<c10d::Work> broadcast_async(Group &g, std::vector<at::Tensor> &ts, int root,
                                              std::chrono::milliseconds timeout) {
  c10d::BroadcastOptions o;
  o.rootRank = root;
  o.rootTensor = 0;
  o.timeout = timeout;
  return g.pg->broadcast(ts, o);
}

c10::intrusive_ptr<c10d::Work> reduce_async(Group &g, std::vector<at::Tensor> &ts, int root,
                                           std::chrono::milliseconds timeout) {
  c10d::ReduceOptions o;
  o.reduceOp = c10d::ReduceOp(c10d::ReduceOp::SUM);
  o.rootRank = root;
  o.rootTensor = 0;
  o.timeout = timeout;
  return g.pg->reduce(ts, o);
}

// Bucket: consecutive tensors of one dtype and device, flattened into one
// buffer (or the tensor itself when it is alone and contiguous).
struct Bucket {
  std::vector<at::Tensor> members;
  at::Tensor flat;
  c10::intrusive_ptr<c10d::Work> work;
};

// make_buckets groups ts into buckets of at most cap bytes (cap <= 0: one
// per dtype and device run). A tensor of half the cap or more gets a
// bucket of its own, so that the collective runs on it in place rather
// than on a flattened copy (the copies in and out of the flat buffer cost
// more memory traffic than small tensors' separate collectives would).
std::vector<Bucket> make_buckets(const std::vector<at::Tensor> &ts, int64_t cap) {
  std::vector<Bucket> out;
  int64_t bytes = 0;
  bool closed = false;  // the last bucket holds a large tensor alone
  for (const auto &t : ts) {
    int64_t b = t.numel() * static_cast<int64_t>(t.element_size());
    bool large = cap > 0 && 2 * b >= cap;
    bool fresh = out.empty() || closed || large || out.back().members.front().scalar_type() != t.scalar_type() ||
                 out.back().members.front().device() != t.device() || (cap > 0 && bytes + b > cap);
    if (fresh) {
      out.emplace_back();
      bytes = 0;
    }
    out.back().members.push_back(t);
    bytes += b;
    closed = large;
  }
  return out;
}

void flatten(Bucket &b) {
  if (b.members.size() == 1 && b.members[0].is_contiguous()) {
    b.flat = b.members[0];
    return;
  }
  std::vector<at::Tensor> views;
  views.reserve(b.members.size());
  for (auto &m : b.members) views.push_back(m.reshape({-1}));
  b.flat = at::cat(views);
}

void unflatten(Bucket &b) {
  if (b.flat.is_same(b.members[0])) return;
  int64_t off = 0;
  for (auto &m : b.members) {
    int64_t n = m.numel();
    m.copy_(b.flat.narrow(0, off, n).view(m.sizes()));
    off += n;
  }
}

// run_buckets starts one collective per bucket, keeping two in flight (the
// next bucket is flattened and sent while the previous one is reduced), and
// writes each result back. Returns the number of buckets.
template <typename Launch, typename Finish>
int run_buckets(Group &g, const char *what, std::vector<Bucket> buckets, std::chrono::milliseconds timeout,
                Launch launch, Finish finish) {
  at::NoGradGuard no_grad;
  std::deque<Bucket *> inflight;
  auto drain = [&]() {
    Bucket *b = inflight.front();
    inflight.pop_front();
    wait(g, what, b->work, timeout);
    finish(*b);
    unflatten(*b);
    b->flat = at::Tensor();
    b->work.reset();
  };
  for (auto &b : buckets) {
    flatten(b);
    std::vector<at::Tensor> one{b.flat};
    b.work = launch(one);
    inflight.push_back(&b);
    if (inflight.size() >= 2) drain();
  }
  while (!inflight.empty()) drain();
  return static_cast<int>(buckets.size());
}

// global_or all-reduces a 0/1 flag per parameter (max): which parameters
// have a gradient on some rank. One small collective keeps every rank's
// buckets identical.
std::vector<char> global_or(Group &g, const std::vector<char> &local, const at::Device &dev, const char *what,
                            std::chrono::milliseconds timeout) {
  at::Tensor mask = at::zeros({static_cast<int64_t>(local.size())}, at::TensorOptions().dtype(at::kInt));
  {
    auto ma = mask.accessor<int, 1>();
    for (size_t i = 0; i < local.size(); i++) ma[i] = local[i] ? 1 : 0;
  }
  if (g.size > 1) {
    at::Tensor m = g.backend == "nccl" ? mask.to(dev) : mask;
    std::vector<at::Tensor> one{m};
    auto w = all_reduce_async(g, one, 2, timeout);
    wait(g, what, w, timeout);
    mask = m.to(at::kCPU);
  }
  std::vector<char> out(local.size());
  auto any = mask.accessor<int, 1>();
  for (size_t i = 0; i < out.size(); i++) out[i] = any[i] != 0;
  return out;
}

// average_grads replaces each gradient by its mean over the ranks (its sum
// with average false), in buckets of at most bucket_bytes. Returns the
// number of buckets.
int average_grads(Group &g, const char *what, const std::vector<at::Tensor> &grads, int64_t bucket_bytes,
                  std::chrono::milliseconds timeout, bool average = true) {
  int world = average ? g.size : 1;
  return run_buckets(
      g, what, make_buckets(grads, bucket_bytes), timeout,
      [&](std::vector<at::Tensor> &one) { return all_reduce_async(g, one, 0, timeout); },
      [world](Bucket &b) {
        if (world > 1) b.flat.div_(world);
      });
}

// Reducer: gradient averaging started from autograd hooks (see dist.h).
struct Reducer {
  struct State {
    std::mutex mu;
    Group g;  // a copy: keeps the backend alive while hooks may fire
    std::vector<at::Tensor> params;
    std::vector<std::vector<int>> buckets;  // parameter indices, in build's order
    std::vector<int> bucket_of;
    // storage: per bucket, one flat buffer that holds its parameters'
    // gradients (DDP's gradient_as_bucket_view): view is each parameter's
    // slice, shaped like it, which becomes its .grad, so the backward pass
    // accumulates straight into the buffer that is all-reduced in place.
    std::vector<at::Tensor> storage, view;
    std::vector<c10::intrusive_ptr<c10d::Work>> work;  // per bucket, while in flight
    std::vector<int> pending;  // per bucket: gradients still to come
    std::vector<char> ready;   // per parameter
    // Per parameter:
    //   used: it has a gradient in the open step (one from before the
    //     step, or the hook fired in one of the step's backward passes);
    //   hooked: the hook fired in this (armed) backward pass;
    //   premarked: no gradient in this rank's last armed backward pass:
    //     counted ready from the start, so that its bucket need not wait
    //     for a gradient that may never come (DDP's static graph).
    std::vector<char> used, hooked, premarked;
    // arrival: the order of the gradients in the step's armed backward
    // pass, until the buckets are rebuilt in that order after the first
    // step (rank 0's, as DDP does): parameters are created in an order,
    // used in another (a FLUX ControlNet's controlnet_x_embedder is created
    // last and used first, so its gradient comes last and would hold the
    // first bucket, and with it every other, until the end).
    std::vector<int> arrival;
    bool rebuilt = false;
    std::vector<int> rebuild;  // the new order, for the next step's start
    size_t next = 0;      // next bucket to start
    int outstanding = 0;  // gradients still to come in the armed pass
    int overlapped = 0;   // buckets started while some were
    int64_t bucket_bytes = 0;
    bool open = false;  // a step is open: prepared, not yet finished
    bool armed = false;
    // broken: a collective failed (the group is out of step: no more
    // collectives this step); error: the first failure, collective or
    // local (a copy into a bucket that ran out of memory, say).
    bool broken = false;
    bool closed = false;
    std::chrono::milliseconds timeout{0};
    std::string error;
    std::vector<int> order;  // the parameters in the buckets' order (build's)
    // Sharded gradients (ZeRO stage 2, shard()): owner is each parameter's
    // rank. Every backward pass (a pass) then reduces each bucket, which
    // holds one owner's parameters, to its owner only. A bucket's buffer
    // exists from its first gradient of the pass until its reduce is done;
    // then the owner adds it to acc (its sum over the step's passes and
    // the ranks) and every rank frees it. The pass ends at the next prepare
    // or at finish; the step's end gives the owner's parameters acc's
    // slices, divided by the world size, as their .grad, and the others
    // none. Between passes no parameter has a .grad.
    bool sharded = false;
    std::vector<int> owner;         // per parameter
    std::vector<int> bucket_owner;  // per bucket (-1 unsharded)
    std::vector<int64_t> offset;    // per parameter: where its slice starts in its bucket
    std::vector<at::Tensor> acc;    // per bucket, on its owner
    std::vector<char> got;          // per parameter: a gradient on some rank in the step
    std::vector<char> is_started;   // per bucket: started in the pass
    size_t nstarted = 0;            // buckets started in the pass
    std::deque<size_t> inflight;    // sharded: started, not completed, in start order
    // dynamic: sharded, until the buckets follow the learned order (the
    // first step), the ranks start them in the order rank 0's become
    // ready, which rank 0 announces bucket by bucket (a broadcast before
    // each reduce). In creation order a bucket waiting for a gradient that
    // comes last, or never (a FLUX ControlNet's controlnet_x_embedder, the
    // last block's text stream), would hold every other bucket, and its
    // buffer, until the pass's end: the whole gradient set at once.
    bool dynamic = false;
    // The announcements' tensors are made between steps, so that a pass
    // (a failed one too) allocates nothing for them: rank 0 sends slices
    // of announce_src (0, 1, …, buckets − 1), the others receive into
    // announce.
    at::Tensor announce_src;
    std::vector<c10::intrusive_ptr<c10d::Work>> announced_sent;  // rank 0
    at::Tensor announce;                           // the others: the index being received
    c10::intrusive_ptr<c10d::Work> announce_work;  // its broadcast, posted
    int64_t announced = -1;                        // received, not yet started
    // scratch: per (dtype, device), a buffer of the largest bucket's size,
    // made between steps, through which a rank whose pass failed takes
    // part in the rest of the pass's reduces without allocating.
    std::map<std::pair<int, std::string>, at::Tensor> scratch;
    static constexpr size_t max_inflight = 2;
    // held: sharded bucket buffers that exist now; held_peak: the most at
    // once in the open or last step (the owners' sums not counted).
    size_t held = 0, held_peak = 0;
    bool pass_pending = false;      // a pass was prepared whose end is due
    bool last = false;              // that pass is the step's last (prepare(sync))

    // build splits the parameters, taken in order, into buckets of one
    // dtype and device, at most bucket_bytes each (a parameter joins the
    // open bucket of its dtype and device, as DDP assigns them), with one
    // buffer per bucket. A gradient that is a view of the old buffers
    // moves along.
    void build(const std::vector<int> &ord, bool allocate = true) {
      std::vector<at::Tensor> old;
      for (size_t i = 0; i < params.size() && i < view.size(); i++) {
        if (params[i].grad().defined() && view[i].defined() && params[i].grad().is_same(view[i])) {
          old = view;  // some gradient to move: both buffers for a moment
          break;
        }
      }
      order = ord;
      view.clear();
      storage.clear();  // freed first when no gradient holds it
      buckets.clear();
      bucket_owner.clear();
      bucket_of.assign(params.size(), 0);
      offset.assign(params.size(), 0);
      view.assign(params.size(), at::Tensor());
      // (owner, dtype, device) → (bucket, bytes)
      std::map<std::tuple<int, int, std::string>, std::pair<int, int64_t>> filling;
      int prev = -1;
      for (int i : ord) {
        const auto &p = params[i];
        int64_t b = p.numel() * static_cast<int64_t>(p.element_size());
        int own = sharded ? owner[i] : -1;
        // Sharded, a bucket holds consecutive parameters of one owner, so
        // that it starts, completes and frees its buffer as soon as its
        // gradients are in (more buckets, each reduced to one rank).
        if (own != prev) filling.clear();
        prev = own;
        auto key = std::make_tuple(own, static_cast<int>(p.scalar_type()), p.device().str());
        auto it = filling.find(key);
        if (it == filling.end() || (bucket_bytes > 0 && it->second.second + b > bucket_bytes)) {
          buckets.emplace_back();
          bucket_owner.push_back(own);
          it = filling.insert_or_assign(key, std::make_pair(static_cast<int>(buckets.size()) - 1, int64_t{0})).first;
        }
        buckets[it->second.first].push_back(i);
        bucket_of[i] = it->second.first;
        it->second.second += b;
      }
      for (const auto &b : buckets) {
        int64_t off = 0;
        for (int i : b) {
          offset[i] = off;
          off += params[i].numel();
        }
      }
      storage.assign(buckets.size(), at::Tensor());
      if (sharded) {
        // (dtype, device) → the largest bucket's size and its options
        std::map<std::pair<int, std::string>, std::pair<int64_t, at::TensorOptions>> need;
        for (size_t k = 0; k < buckets.size(); k++) {
          const auto &p = params[buckets[k].front()];
          auto key = std::make_pair(static_cast<int>(p.scalar_type()), p.device().str());
          auto it = need.try_emplace(key, 0, p.options().requires_grad(false)).first;
          it->second.first = std::max(it->second.first, bucket_numel(k));
        }
        for (const auto &[key, n] : need) {
          auto it = scratch.find(key);
          if (it == scratch.end() || it->second.numel() < n.first) scratch[key] = at::zeros({n.first}, n.second);
        }
      }
      if (sharded) {
        at::Device dev = params.empty() ? at::Device(at::kCPU) : params[0].device();
        auto lopts = at::TensorOptions().dtype(at::kLong).device(g.backend == "nccl" ? dev : at::Device(at::kCPU));
        announce_src = at::arange(static_cast<int64_t>(buckets.size()), lopts);
        announce = at::zeros({1}, lopts);
        announced_sent.reserve(buckets.size());
        inflight.clear();
        is_started.assign(buckets.size(), 0);
      }
      // Sharded buffers come with each pass's first gradient of theirs.
      for (size_t k = 0; k < buckets.size() && !sharded && allocate; k++) {
        alloc(k, true);
        for (int i : buckets[k]) {
          at::Tensor &gr = params[i].mutable_grad();
          if (gr.defined() && old.size() == params.size() && old[i].defined() && gr.is_same(old[i])) {
            view[i].copy_(gr);
            gr = view[i];
          }
        }
      }
      work.assign(buckets.size(), {});
      pending.assign(buckets.size(), 0);
      acc.assign(buckets.size(), at::Tensor());
    }

    // alloc makes bucket k's buffer and its parameters' views into it
    // (zeros, or left for attach to write: it writes every view).
    int64_t bucket_numel(size_t k) const {
      int64_t numel = 0;
      for (int i : buckets[k]) numel += params[i].numel();
      return numel;
    }

    void alloc(size_t k, bool zero) {
      const auto &b = buckets[k];
      int64_t numel = bucket_numel(k);
      auto opts = params[b.front()].options().requires_grad(false);
      storage[k] = zero ? at::zeros({numel}, opts) : at::empty({numel}, opts);
      if (sharded) held_peak = std::max(held_peak, ++held);
      for (int i : b) view[i] = storage[k].narrow(0, offset[i], params[i].numel()).view(params[i].sizes());
    }

    // attach makes parameter i's gradient its slice of the bucket: the
    // gradient it has is copied in, zeros where it has none (a parameter
    // whose bucket starts without a gradient from it).
    void attach(int i) {
      if (!storage[bucket_of[i]].defined()) alloc(bucket_of[i], false);
      at::Tensor &gr = params[i].mutable_grad();
      if (gr.defined() && gr.is_same(view[i])) return;
      if (gr.defined()) {
        view[i].copy_(gr);
      } else {
        view[i].zero_();
      }
      gr = view[i];
    }

    // start launches bucket k's all-reduce, in place. Its parameters give
    // up their .grad until finish, so that whatever the backward pass
    // still accumulates for them lands in a fresh tensor (a late gradient,
    // averaged at finish), never in the buffer in flight. Called with mu
    // held.
    // A local failure is recorded and the all-reduce still starts, so that
    // the ranks stay in step; a failure to start it marks the group broken
    // and throws.
    void start(size_t k) {
      // Sharded, once the pass has failed on this rank (Abort, or a
      // buffer it could not allocate) no more buffers are made.
      bool failed_pass = sharded && !error.empty();
      if (!failed_pass) {
        try {
          for (int i : buckets[k]) attach(i);
        } catch (const c10::Error &e) {
          if (error.empty()) error = e.what_without_backtrace();
          failed_pass = sharded;
        }
      }
      for (int i : buckets[k]) params[i].mutable_grad() = at::Tensor();
      is_started[k] = 1;
      nstarted++;
      if (failed_pass) {
        // The rank still takes part in the reduce, through its scratch
        // buffer, one bucket at a time, so that the ranks stay in step;
        // the pass then fails on every rank at its end.
        release(k);
        while (!inflight.empty()) complete_front();
        const auto &p = params[buckets[k].front()];
        auto sc = scratch.find(std::make_pair(static_cast<int>(p.scalar_type()), p.device().str()));
        if (sc == scratch.end() || sc->second.numel() < bucket_numel(k)) {
          broken = true;  // this rank cannot take part in the reduce
          TORCH_CHECK(false, "dist: reducer: no scratch buffer for bucket ", k, " (a parameter changed dtype or device?)");
        }
        at::Tensor buf = sc->second.narrow(0, 0, bucket_numel(k));
        std::vector<at::Tensor> one{buf};
        work[k] = in_step([&] { return reduce_async(g, one, bucket_owner[k], timeout); });
        inflight.push_back(k);
        complete_front();  // no addition (no buffer), nothing freed
        return;
      }
      std::vector<at::Tensor> one{storage[k]};
      work[k] = in_step([&] {
        return sharded ? reduce_async(g, one, bucket_owner[k], timeout) : all_reduce_async(g, one, 0, timeout);
      });
      if (sharded) inflight.push_back(k);
    }

    // in_step runs f, which starts or waits for a collective: if it
    // throws, the group is out of step (broken) and the error goes on.
    template <typename F>
    auto in_step(F f) -> decltype(f()) {
      try {
        return f();
      } catch (...) {
        broken = true;
        throw;
      }
    }

    // complete_front completes the oldest sharded bucket in flight.
    void complete_front() {
      size_t k = inflight.front();
      inflight.pop_front();
      complete(k);
    }

    // bound waits for the oldest reduces until fewer than max_inflight
    // are in flight (sharded).
    void bound() {
      while (sharded && inflight.size() >= max_inflight) complete_front();
    }

    // post_announce posts the receipt of rank 0's next announcement.
    void post_announce() {
      std::vector<at::Tensor> one{announce};
      announce_work = in_step([&] { return broadcast_async(g, one, 0, timeout); });
    }

    // advance starts the buckets that can start (with mu held): in index
    // order or, dynamic, in the order rank 0 announces; at the pass's end
    // (end) all the others. Sharded, before each start the oldest reduces
    // are waited for until fewer than max_inflight are in flight (as
    // DeepSpeed's stage 2 waits for a free buffer; several buckets may
    // become startable at once), and after, the reduces that are done give
    // their buffers back, oldest first, so that the buffers never add up to
    // the whole gradient set when the reduces are slower than the backward
    // pass.
    void advance(bool end) {
      size_t nb = buckets.size();
      if (!dynamic) {
        while (!broken && next < nb && (end || pending[next] == 0)) {
          bound();
          start(next++);
          if (outstanding > 0) overlapped++;
        }
      } else if (g.rank == 0) {
        for (size_t k = 0; k < nb && !broken; k++) {
          if (is_started[k] || !(end || pending[k] == 0)) continue;
          bound();
          std::vector<at::Tensor> one{announce_src.narrow(0, static_cast<int64_t>(k), 1)};
          announced_sent.push_back(in_step([&] { return broadcast_async(g, one, 0, timeout); }));
          start(k);
          if (outstanding > 0) overlapped++;
        }
      } else {
        while (!broken && nstarted < nb) {
          if (announced < 0) {
            if (!announce_work) post_announce();
            if (!end && !announce_work->isCompleted()) {
              // Rank 0 lags: go on with the backward pass unless
              // max_inflight buckets here already hold buffers it has not
              // announced yet (then wait for it: every bucket it announced
              // has started here, so it is not waiting for this rank).
              size_t held = 0;
              for (size_t k = 0; k < nb; k++) held += storage[k].defined() && !is_started[k];
              if (held < max_inflight) break;
            }
            auto w = std::move(announce_work);
            announce_work.reset();
            in_step([&] { wait(g, "reducer (bucket order)", w, timeout); });
            announced = announce.item<int64_t>();
            if (announced < 0 || announced >= static_cast<int64_t>(nb) || is_started[announced]) {
              broken = true;  // the ranks disagree: out of step
              TORCH_CHECK(false, "dist: reducer: rank 0 announced bucket ", announced, ", not one of the ", nb,
                          " left to start");
            }
          }
          size_t k = static_cast<size_t>(announced);
          if (!end && pending[k] != 0) break;
          announced = -1;
          bound();
          start(k);
          if (outstanding > 0) overlapped++;
          if (nstarted < nb) post_announce();  // after this reduce, as rank 0 issues them
        }
      }
      while (sharded && !broken && !inflight.empty() &&
             (inflight.size() > max_inflight || (work[inflight.front()] && work[inflight.front()]->isCompleted()))) {
        complete_front();
      }
    }

    // complete, on a sharded bucket whose reduce has started: waits for
    // it; the owner adds the buffer to its sum and every rank frees it.
    void complete(size_t k) {
      auto w = std::move(work[k]);
      work[k].reset();
      if (w) in_step([&] { wait(g, "reducer", w, timeout); });
      if (bucket_owner[k] == g.rank && storage[k].defined()) {
        if (acc[k].defined()) {
          acc[k].add_(storage[k]);
        } else {
          acc[k] = storage[k];
        }
      }
      release(k);
    }

    // release drops bucket k's buffer (a sharded one: counted).
    void release(size_t k) {
      if (sharded && storage[k].defined()) held--;
      storage[k] = at::Tensor();
      for (int i : buckets[k]) view[i] = at::Tensor();
    }

    // acc_view is parameter i's slice of its owner's sum.
    at::Tensor acc_view(int i) {
      return acc[bucket_of[i]].narrow(0, offset[i], params[i].numel()).view(params[i].sizes());
    }

    // drop_step closes a sharded step that failed: no sums, no gradients.
    void drop_step() {
      acc.assign(buckets.size(), at::Tensor());
      got.assign(params.size(), 0);
      for (auto &p : params) p.mutable_grad() = at::Tensor();
      open = false;
      armed = false;
      pass_pending = false;
    }

    // mark is the hook: parameter i's gradient is accumulated.
    void mark(int i) {
      std::lock_guard<std::mutex> lock(mu);
      if (!open || closed) return;
      used[i] = 1;
      if (!is_started[bucket_of[i]]) {
        // The first gradient of the step was stolen into a fresh tensor
        // (AccumulateGrad's fast path); it moves into the bucket, where the
        // later ones accumulate in place. A copy costs less than zeroing the
        // buckets up front and adding.
        try {
          at::NoGradGuard no_grad;
          attach(i);
        } catch (const c10::Error &e) {
          if (error.empty()) error = e.what_without_backtrace();
        }
      }
      if (!armed) return;
      hooked[i] = 1;
      // After its bucket started (a parameter premarked but used after
      // all, or used again: inside and outside a checkpointed function,
      // the recomputation's own backward pass accumulates it), the
      // gradient is in a fresh .grad, averaged at finish.
      if (is_started[bucket_of[i]]) return;
      if (ready[i]) return;  // premarked, or a second accumulation in time
      ready[i] = 1;
      pending[bucket_of[i]]--;
      outstanding--;
      if (!rebuilt) arrival.push_back(i);
      try {
        at::NoGradGuard no_grad;
        advance(false);
      } catch (const c10::Error &e) {
        if (error.empty()) error = e.what_without_backtrace();
        broken = true;
      } catch (const std::exception &e) {
        if (error.empty()) error = e.what();
        broken = true;
      }
    }

    // learn_order, after the first synchronised pass, takes rank 0's order
    // of the gradients for the buckets of the next step. Called with mu
    // held.
    void learn_order(const at::Device &dev, std::chrono::milliseconds timeout) {
      if (rebuilt) return;
      // On rank 0, the parameters whose gradient did not come in the armed
      // pass (in reverse order: next time their buckets go first, having
      // nothing to wait for), then the others in the order their gradients
      // came; every rank takes rank 0's order.
      size_t n = params.size();
      std::vector<char> seen(n, 0);
      for (int i : arrival) seen[i] = 1;
      at::Tensor ord = at::empty({static_cast<int64_t>(n)}, at::TensorOptions().dtype(at::kLong));
      {
        auto o = ord.accessor<int64_t, 1>();
        size_t j = 0;
        for (size_t i = n; i-- > 0;) {
          if (!seen[i]) o[j++] = static_cast<int64_t>(i);
        }
        for (int i : arrival) o[j++] = i;
      }
      if (g.size > 1) {
        at::Tensor t = g.backend == "nccl" ? ord.to(dev) : ord;
        std::vector<at::Tensor> one{t};
        auto w = broadcast_async(g, one, 0, timeout);
        wait(g, "reducer (gradient order)", w, timeout);
        ord = t.to(at::kCPU);
      }
      std::vector<int> learned(n);
      std::vector<char> have(n, 0);
      auto o = ord.accessor<int64_t, 1>();
      for (size_t j = 0; j < n; j++) {
        TORCH_CHECK(o[j] >= 0 && o[j] < static_cast<int64_t>(n) && !have[o[j]],
                    "dist: reducer: rank 0's gradient order is not a permutation");
        have[o[j]] = 1;
        learned[j] = static_cast<int>(o[j]);
      }
      rebuild = learned;
      rebuilt = true;
      arrival.clear();
    }

    // exchange_flags tells every rank which parameters have a gradient on
    // some rank (used), which got some late, and whether a rank failed
    // (err): one small all-reduce of 2n + 1 flags, so that every rank
    // returns an error if one does (it throws then).
    std::vector<char> exchange_flags(const std::vector<at::Tensor> &late, const std::string &err,
                                     std::chrono::milliseconds timeout) {
      size_t n = params.size();
      std::vector<char> flags(2 * n + 1);
      for (size_t i = 0; i < n; i++) {
        flags[i] = used[i];
        flags[n + i] = late[i].defined();
      }
      flags[2 * n] = !err.empty();
      at::Device dev = n ? params[0].device() : at::Device(at::kCPU);
      auto any = global_or(g, flags, dev, "reducer (gradient flags)", timeout);
      if (any[2 * n]) {
        TORCH_CHECK(false, err.empty() ? std::string("dist: reducer: another rank failed in this step") : err,
                    " (the gradients are not averaged)");
      }
      return any;
    }

    // reduce_late returns, for each parameter that got a gradient late on
    // some rank (any's second half), that gradient's sum over the ranks
    // (its mean with average), zeros standing for a rank that has none;
    // undefined for the others.
    std::vector<at::Tensor> reduce_late(std::vector<at::Tensor> late, const std::vector<char> &any, bool average,
                                        std::chrono::milliseconds timeout) {
      size_t n = params.size();
      std::vector<at::Tensor> lates;
      for (size_t i = 0; i < n; i++) {
        if (!any[n + i]) {
          late[i] = at::Tensor();
          continue;
        }
        if (!late[i].defined()) late[i] = at::zeros(params[i].sizes(), params[i].options().requires_grad(false));
        lates.push_back(late[i]);
      }
      average_grads(g, "reducer (late gradients)", lates, bucket_bytes, timeout, average);  // in place
      return late;
    }

    // end_pass closes a sharded pass (with mu held): the buckets the
    // backward pass did not start start now, in order; every bucket
    // completes; gradients that came after their bucket started are summed
    // over the ranks and added to their owner's sum; and one all-reduce of
    // 2n + 1 flags tells every rank which parameters have gradients, which
    // got some late, and whether a rank failed. A failure closes the step
    // on every rank (drop_step) and throws.
    void end_pass(bool failed) {
      pass_pending = false;
      at::NoGradGuard no_grad;
      if (failed && error.empty()) error = "dist: reducer: this rank's step failed";
      try {
        advance(true);
      } catch (const c10::Error &e) {
        if (error.empty()) error = e.what_without_backtrace();
        // A rank that stopped before starting every bucket would meet
        // its peers' reduces with the flags' all-reduce: out of step.
        if (sharded && nstarted < buckets.size()) broken = true;
      }
      next = 0;
      // Every started reduce (and rank 0's announcements) completes, even
      // after an error: a rank must not leave a collective its peers are in.
      while (!inflight.empty()) {
        try {
          complete_front();
        } catch (const c10::Error &e) {
          if (error.empty()) error = e.what_without_backtrace();
          broken = true;
        }
      }
      for (auto &a : announced_sent) {
        try {
          wait(g, "reducer (bucket order)", a, timeout);
        } catch (const c10::Error &e) {
          if (error.empty()) error = e.what_without_backtrace();
          broken = true;
        }
      }
      announced_sent.clear();
      if (announce_work) {  // posted, never matched: only when broken
        broken = true;
        announce_work.reset();
      }
      announced = -1;
      size_t n = params.size();
      // A .grad now is a gradient that came after its bucket started.
      std::vector<at::Tensor> late(n);
      for (size_t i = 0; i < n; i++) {
        at::Tensor &gr = params[i].mutable_grad();
        if (gr.defined() && !(view[i].defined() && gr.is_same(view[i]))) late[i] = gr;
        gr = at::Tensor();
      }
      for (size_t k = 0; k < buckets.size(); k++) {
        release(k);
        work[k].reset();
      }
      for (auto &v : view) v = at::Tensor();
      std::string err = error;
      error.clear();
      if (broken) {
        broken = false;
        drop_step();
        TORCH_CHECK(false, err);
      }
      at::Device dev = n ? params[0].device() : at::Device(at::kCPU);
      try {
        auto any = exchange_flags(late, err, timeout);
        // The late gradients' sums go to their owners' sums.
        late = reduce_late(std::move(late), any, false, timeout);
        for (size_t i = 0; i < n; i++) {
          if (late[i].defined() && owner[i] == g.rank && acc[bucket_of[i]].defined()) acc_view(i).add_(late[i]);
        }
        // As unsharded, a parameter without a gradient in the step's last
        // pass is counted ready in the next step's passes (one that gets
        // a gradient after all gives a late one).
        for (size_t i = 0; i < n; i++) {
          got[i] = got[i] || any[i];
          if (last) premarked[i] = !hooked[i];
        }
        learn_order(dev, timeout);
      } catch (...) {
        drop_step();
        throw;
      }
    }
  };
  std::shared_ptr<State> st;
  std::vector<std::pair<std::shared_ptr<torch::autograd::Node>, uintptr_t>> hooks;
};

// set_use_libuv sets TCPStoreOptions::useLibUV where this libtorch has it
// (2.2 and later) and reports whether it did.
template <typename O>
auto set_use_libuv(O &o, bool v, int) -> decltype(o.useLibUV = v, true) {
  o.useLibUV = v;
  return true;
}
template <typename O>
bool set_use_libuv(O &, bool, long) {
  return false;
}

}  // namespace dist
}  // namespace dp2o

using dp2o::T;
using dp2o::wrap;
using dp2o::dist::G;

extern "C" {

dp2o_err dp2o_dist_tcp_store(const char *host, int port, int is_server, int world_size, int64_t timeout_ms,
                             dp2o_store *out) {
  DP2O_TRY
  TORCH_CHECK(port > 0 && port < 65536, "dist: TCP store port ", port, " out of range");
  TORCH_CHECK(world_size >= 0, "dist: world size ", world_size);
  c10d::TCPStoreOptions o;
  o.port = static_cast<std::uint16_t>(port);
  o.isServer = is_server != 0;
  if (world_size > 0) o.numWorkers = static_cast<std::size_t>(world_size);
  o.waitWorkers = world_size > 0;
  o.timeout = std::chrono::milliseconds(timeout_ms);
  // libtorch 2.4+ asks for the libuv server by default (USE_LIBUV=0 turns it
  // off, as in torch.distributed) and rejects it where it was built without
  // libuv (Debian's libtorch 2.6): then the classic server, as torchrun does.
  const char *uv = std::getenv("USE_LIBUV");
  const bool want_uv = !(uv && std::string(uv) == "0");
  const bool has_uv = dp2o::dist::set_use_libuv(o, want_uv, 0);
  c10::intrusive_ptr<c10d::TCPStore> s;
  try {
    s = c10::make_intrusive<c10d::TCPStore>(std::string(host), o);
  } catch (const c10::Error &e) {
    if (!has_uv || !want_uv || std::string(e.what()).find("libuv") == std::string::npos) throw;
    dp2o::dist::set_use_libuv(o, false, 0);
    s = c10::make_intrusive<c10d::TCPStore>(std::string(host), o);
  }
  *out = new dp2o::dist::Store{s};
  DP2O_CATCH
}

dp2o_err dp2o_dist_file_store(const char *path, int world_size, int64_t timeout_ms, dp2o_store *out) {
  DP2O_TRY
  TORCH_CHECK(world_size >= 1, "dist: world size ", world_size);
  auto s = c10::make_intrusive<c10d::FileStore>(std::string(path), world_size);
  s->setTimeout(std::chrono::milliseconds(timeout_ms));
  *out = new dp2o::dist::Store{s};
  DP2O_CATCH
}

dp2o_err dp2o_dist_store_set(dp2o_store h, const char *key, const void *data, int64_t n) {
  DP2O_TRY
  auto *s = static_cast<dp2o::dist::Store *>(h);
  const auto *p = static_cast<const uint8_t *>(data);
  s->s->set(std::string(key), std::vector<uint8_t>(p, p + n));
  DP2O_CATCH
}

dp2o_err dp2o_dist_store_get(dp2o_store h, const char *key, void **out, int64_t *n) {
  DP2O_TRY
  auto *s = static_cast<dp2o::dist::Store *>(h);
  auto v = s->s->get(std::string(key));
  void *p = std::malloc(v.size() ? v.size() : 1);
  TORCH_CHECK(p != nullptr, "dist: out of memory");
  if (!v.empty()) std::memcpy(p, v.data(), v.size());
  *out = p;
  *n = static_cast<int64_t>(v.size());
  DP2O_CATCH
}

void dp2o_dist_store_free(dp2o_store h) { delete static_cast<dp2o::dist::Store *>(h); }

dp2o_err dp2o_dist_group_new(dp2o_store sh, const char *prefix, const char *backend, int rank, int size,
                             int64_t timeout_ms, const char *iface, const char *hostname, int device_index,
                             dp2o_group *out) {
  DP2O_TRY
  TORCH_CHECK(sh != nullptr, "dist: no store");
  TORCH_CHECK(size >= 1 && rank >= 0 && rank < size, "dist: rank ", rank, " outside a world of ", size);
  TORCH_CHECK(timeout_ms > 0, "dist: timeout must be positive, got ", timeout_ms, " ms");
  c10::intrusive_ptr<c10d::Store> store = static_cast<dp2o::dist::Store *>(sh)->s;
  if (prefix && *prefix) store = c10::make_intrusive<c10d::PrefixStore>(std::string(prefix), store);
  std::string b(backend);
  auto timeout = std::chrono::milliseconds(timeout_ms);
  c10::intrusive_ptr<dp2o::dist::PG> pg;
  if (b == "gloo") {
#ifdef DP2O_GLOO
    auto o = c10d::ProcessGroupGloo::Options::create(timeout);
    std::string ifc(iface ? iface : ""), host(hostname ? hostname : "");
    if (!ifc.empty()) {
      o->devices.push_back(c10d::ProcessGroupGloo::createDeviceForInterface(ifc));
    } else if (!host.empty()) {
      o->devices.push_back(c10d::ProcessGroupGloo::createDeviceForHostname(host));
    } else {
      o->devices.push_back(c10d::ProcessGroupGloo::createDefaultDevice());
    }
    o->threads = 2;
    pg = c10::make_intrusive<c10d::ProcessGroupGloo>(store, rank, size, o);
#else
    TORCH_CHECK(false,
                "dist: this libtorch build has no Gloo backend (the shim was built without ProcessGroupGloo.hpp "
                "and Gloo's headers; on Debian install libgloo-dev and rebuild with `make shim`)");
#endif
  } else if (b == "nccl") {
#ifdef DP2O_NCCL
    TORCH_CHECK(device_index >= 0, "dist: NCCL needs a CUDA device index, got ", device_index);
    // Without blocking wait an NCCL collective whose peer died never
    // completes; with it, Work::wait honours the timeout (as torch's
    // NCCL_BLOCKING_WAIT=1). The environment is read when the group is made.
    if (!std::getenv("NCCL_BLOCKING_WAIT") && !std::getenv("TORCH_NCCL_BLOCKING_WAIT")) {
      setenv("NCCL_BLOCKING_WAIT", "1", 0);
      setenv("TORCH_NCCL_BLOCKING_WAIT", "1", 0);
    }
    c10::cuda::set_device(static_cast<c10::DeviceIndex>(device_index));
    auto o = c10d::ProcessGroupNCCL::Options::create();
    o->timeout = timeout;
    pg = c10::make_intrusive<c10d::ProcessGroupNCCL>(store, rank, size, o);
#else
    TORCH_CHECK(false,
                "dist: this libtorch build has no NCCL backend (NCCL needs a CUDA libtorch, LIBTORCH=... with "
                "libtorch_cuda, and nccl.h at build time)");
#endif
  } else {
    TORCH_CHECK(false, "dist: unknown backend \"", b, "\" (want gloo or nccl)");
  }
  auto *g = new dp2o::dist::Group;
  g->store = store;
  g->pg = pg;
  g->backend = b;
  g->rank = rank;
  g->size = size;
  g->timeout = timeout;
  *out = g;
  DP2O_CATCH
}

void dp2o_dist_group_free(dp2o_group h) {
  // The backend's destructor waits for queued work, which is bounded by the
  // group's timeout when a peer is gone.
  try {
    delete static_cast<dp2o::dist::Group *>(h);
  } catch (...) {
  }
}

dp2o_err dp2o_dist_all_reduce(dp2o_group h, dp2o_tensor *hs, int n, int op, int64_t timeout_ms) {
  DP2O_TRY
  auto &g = G(h);
  auto timeout = dp2o::dist::timeout_of(g, timeout_ms);
  std::vector<at::Tensor> ts = dp2o::tensors_of(hs, n);
  for (auto &t : ts) {
    dp2o::dist::check_tensor(g, t, "all_reduce");
    if (op == 1) dp2o::dist::check_average(t);
  }
  at::NoGradGuard no_grad;
  // One collective per tensor: c10d takes a list only for the tensors of
  // one rank on several devices.
  for (auto &t : ts) {
    std::vector<at::Tensor> one{t};
    auto w = dp2o::dist::all_reduce_async(g, one, op, timeout);
    dp2o::dist::wait(g, "all_reduce", w, timeout);
    if (op == 1) t.div_(g.size);
  }
  DP2O_CATCH
}

dp2o_err dp2o_dist_broadcast(dp2o_group h, dp2o_tensor *hs, int n, int root, int64_t timeout_ms) {
  DP2O_TRY
  auto &g = G(h);
  TORCH_CHECK(root >= 0 && root < g.size, "dist: broadcast root ", root, " outside a world of ", g.size);
  auto timeout = dp2o::dist::timeout_of(g, timeout_ms);
  std::vector<at::Tensor> ts = dp2o::tensors_of(hs, n);
  for (auto &t : ts) dp2o::dist::check_tensor(g, t, "broadcast");
  at::NoGradGuard no_grad;
  for (auto &t : ts) {
    std::vector<at::Tensor> one{t};
    auto w = dp2o::dist::broadcast_async(g, one, root, timeout);
    dp2o::dist::wait(g, "broadcast", w, timeout);
  }
  DP2O_CATCH
}

dp2o_err dp2o_dist_all_gather(dp2o_group h, dp2o_tensor th, int64_t timeout_ms, dp2o_tensor **outs, int *n) {
  DP2O_TRY
  auto &g = G(h);
  auto timeout = dp2o::dist::timeout_of(g, timeout_ms);
  at::Tensor t = T(th);
  dp2o::dist::check_tensor(g, t, "all_gather");
  at::NoGradGuard no_grad;
  std::vector<at::Tensor> in{t.detach()};
  std::vector<std::vector<at::Tensor>> result(1);
  for (int i = 0; i < g.size; i++) result[0].push_back(at::empty_like(t, at::MemoryFormat::Contiguous));
  c10d::AllgatherOptions o;
  o.timeout = timeout;
  auto w = g.pg->allgather(result, in, o);
  dp2o::dist::wait(g, "all_gather", w, timeout);
  *outs = dp2o::out_list(std::move(result[0]), n);
  DP2O_CATCH
}

dp2o_err dp2o_dist_barrier(dp2o_group h, int64_t timeout_ms) {
  DP2O_TRY
  auto &g = G(h);
  auto timeout = dp2o::dist::timeout_of(g, timeout_ms);
  c10d::BarrierOptions o;
  o.timeout = timeout;
  auto w = g.pg->barrier(o);
  dp2o::dist::wait(g, "barrier", w, timeout);
  DP2O_CATCH
}

dp2o_err dp2o_dist_broadcast_coalesced(dp2o_group h, dp2o_tensor *hs, int n, int root, int64_t bucket_bytes,
                                       int64_t timeout_ms) {
  DP2O_TRY
  auto &g = G(h);
  TORCH_CHECK(root >= 0 && root < g.size, "dist: broadcast root ", root, " outside a world of ", g.size);
  auto timeout = dp2o::dist::timeout_of(g, timeout_ms);
  std::vector<at::Tensor> ts;
  for (int i = 0; i < n; i++) {
    at::Tensor t = T(hs[i]).detach();  // shares storage: the result lands in the parameter
    TORCH_CHECK(t.defined(), "dist: broadcast_coalesced: tensor ", i, " is undefined");
    if (g.backend == "nccl") TORCH_CHECK(t.is_cuda(), "dist: an NCCL group needs CUDA tensors, got ", t.device());
    ts.push_back(t);
  }
  dp2o::dist::run_buckets(
      g, "broadcast_coalesced", dp2o::dist::make_buckets(ts, bucket_bytes), timeout,
      [&](std::vector<at::Tensor> &one) { return dp2o::dist::broadcast_async(g, one, root, timeout); },
      [](dp2o::dist::Bucket &) {});
  DP2O_CATCH
}

dp2o_err dp2o_dist_average_gradients(dp2o_group h, dp2o_tensor *hs, int n, int64_t bucket_bytes, int64_t timeout_ms,
                                     int failed, int *buckets) {
  DP2O_TRY
  auto &g = G(h);
  auto timeout = dp2o::dist::timeout_of(g, timeout_ms);
  if (buckets) *buckets = 0;
  if (n == 0) return nullptr;  // the same empty list on every rank: nothing to exchange
  at::NoGradGuard no_grad;
  std::vector<at::Tensor> params = dp2o::tensors_of(hs, n);
  // One flag per parameter (it has a gradient here), and a last one: this
  // rank's step failed.
  std::vector<char> local(n + 1);
  for (int i = 0; i < n; i++) {
    TORCH_CHECK(params[i].defined(), "dist: average_gradients: parameter ", i, " is undefined");
    local[i] = !failed && params[i].grad().defined();
  }
  local[n] = failed != 0;
  auto any = dp2o::dist::global_or(g, local, params[0].device(), "average_gradients (gradient mask)", timeout);
  TORCH_CHECK(!failed, "dist: average_gradients: this rank's step failed; every rank's is dropped");
  TORCH_CHECK(!any[n], "dist: average_gradients: another rank's step failed; every rank's is dropped");
  std::vector<at::Tensor> grads;
  for (int i = 0; i < n; i++) {
    if (!any[i]) continue;
    auto &p = params[i];
    at::Tensor &gr = p.mutable_grad();
    if (!gr.defined()) gr = at::zeros_like(p, at::MemoryFormat::Contiguous);
    dp2o::dist::check_average(gr);
    if (g.backend == "nccl") TORCH_CHECK(gr.is_cuda(), "dist: an NCCL group needs CUDA gradients, got ", gr.device());
    grads.push_back(gr);
  }
  int nb = dp2o::dist::average_grads(g, "average_gradients", grads, bucket_bytes, timeout);
  if (buckets) *buckets = nb;
  DP2O_CATCH
}

dp2o_err dp2o_dist_reducer_new(dp2o_group h, dp2o_tensor *hs, int n, int64_t bucket_bytes, dp2o_reducer *out,
                               int *buckets) {
  DP2O_TRY
  using dp2o::dist::Reducer;
  auto &g = G(h);
  auto r = std::make_unique<Reducer>();
  r->st = std::make_shared<Reducer::State>();
  auto &st = *r->st;
  st.g = g;
  st.timeout = g.timeout;
  st.params = dp2o::tensors_of(hs, n);
  for (int i = 0; i < n; i++) {
    auto &p = st.params[i];
    TORCH_CHECK(p.defined() && p.is_leaf() && p.requires_grad(), "dist: reducer: parameter ", i,
                " must be a leaf tensor that requires grad");
    if (g.backend == "nccl") TORCH_CHECK(p.is_cuda(), "dist: an NCCL group needs CUDA parameters, got ", p.device());
  }
  // Buckets over the parameters in reverse order (gradients arrive roughly
  // so) until the first step shows the order they arrive in.
  st.bucket_bytes = bucket_bytes;
  std::vector<int> order(n);
  for (int i = 0; i < n; i++) order[i] = n - 1 - i;
  // The buffers come with the first prepare: a reducer sharded before
  // its first step never holds the whole set.
  st.build(order, false);
  st.ready.assign(n, 0);
  for (auto *v : {&st.used, &st.hooked, &st.premarked}) v->assign(n, 0);
  for (int i = 0; i < n; i++) {
    auto acc = torch::autograd::impl::grad_accumulator(st.params[i]);
    TORCH_CHECK(acc != nullptr, "dist: reducer: parameter ", i, " has no gradient accumulator");
    std::weak_ptr<Reducer::State> weak = r->st;
    auto key = acc->add_post_hook(std::make_unique<torch::autograd::utils::LambdaPostHook>(
        [weak, i](const torch::autograd::variable_list &outputs, const torch::autograd::variable_list &) {
          if (auto s = weak.lock()) s->mark(i);
          return outputs;
        }));
    r->hooks.emplace_back(acc, key);
  }
  if (buckets) *buckets = static_cast<int>(st.buckets.size());
  *out = r.release();
  DP2O_CATCH
}

dp2o_err dp2o_dist_reducer_prepare(dp2o_reducer h, int sync, int64_t timeout_ms) {
  DP2O_TRY
  auto &st = *static_cast<dp2o::dist::Reducer *>(h)->st;
  std::lock_guard<std::mutex> lock(st.mu);
  // The hooks' collectives and waits take the group's timeout as of now.
  st.timeout = dp2o::dist::timeout_of(st.g, timeout_ms);
  // Sharded, the previous pass of the step ends here, with the others'
  // (its failure, on any rank, closes the step on every rank).
  if (st.sharded && st.pass_pending) st.end_pass(false);
  TORCH_CHECK(st.next == 0 || !st.armed, "dist: reducer: prepare before the previous finish");
  if (!st.open) {
    // The first backward pass of a step: a gradient already there (from
    // outside the reducer's backward passes) counts as one. A gradient
    // becomes its slice of its bucket at its parameter's first hook, or
    // when its bucket starts.
    at::NoGradGuard no_grad;
    if (!st.rebuild.empty()) {
      // The buckets in the order of the first step's gradients, built
      // now rather than at its finish: once the optimizer has dropped the
      // gradients, the old buffers go before the new ones come.
      st.build(st.rebuild);
      st.rebuild.clear();
      st.dynamic = false;  // the buckets follow the learned order
    }
    if (!st.sharded) {
      for (size_t k = 0; k < st.buckets.size(); k++) {
        if (!st.storage[k].defined()) st.alloc(k, true);
      }
    }
    for (size_t i = 0; i < st.params.size(); i++) st.used[i] = st.params[i].grad().defined();
    st.open = true;
    st.error.clear();  // kept across the step's backward passes until finish
    st.broken = false;
    st.acc.assign(st.buckets.size(), at::Tensor());
    st.got.assign(st.params.size(), 0);
    st.held_peak = st.held;
  } else if (st.sharded) {
    std::fill(st.used.begin(), st.used.end(), 0);  // no .grad between passes
  }
  // Sharded, every pass reduces; sync marks the step's last.
  st.armed = st.sharded || sync != 0;
  st.last = sync != 0;
  st.pass_pending = st.sharded;
  st.is_started.assign(st.buckets.size(), 0);
  st.nstarted = 0;
  st.inflight.clear();
  st.announced_sent.clear();
  st.announce_work.reset();
  st.announced = -1;
  st.next = 0;
  st.overlapped = 0;
  st.arrival.clear();
  st.ready = st.premarked;
  std::fill(st.hooked.begin(), st.hooked.end(), 0);
  st.outstanding = 0;
  for (size_t k = 0; k < st.buckets.size(); k++) {
    int n = 0;
    for (int i : st.buckets[k]) n += !st.ready[i];
    st.pending[k] = n;
    st.outstanding += n;
    st.work[k].reset();
  }
  DP2O_CATCH
}

dp2o_err dp2o_dist_reducer_finish(dp2o_reducer h, int64_t timeout_ms, int failed, int *overlapped, int *buckets) {
  DP2O_TRY
  auto &st = *static_cast<dp2o::dist::Reducer *>(h)->st;
  std::lock_guard<std::mutex> lock(st.mu);
  TORCH_CHECK(st.armed || st.open, "dist: reducer: finish without prepare(sync)");
  if (st.sharded) {
    if (overlapped) *overlapped = st.overlapped;
    if (buckets) *buckets = static_cast<int>(st.buckets.size());
    if (!failed && !st.last && st.error.empty()) st.error = "dist: reducer: finish without prepare(sync)";
    // The step's last pass ends with the others' (throwing on a failure),
    // then each owned parameter with a gradient on some rank gets its
    // slice of the sum, divided into the mean, as its .grad.
    st.timeout = dp2o::dist::timeout_of(st.g, timeout_ms);
    st.end_pass(failed != 0);
    at::NoGradGuard no_grad;
    for (auto &a : st.acc) {
      if (a.defined()) a.div_(st.g.size);
    }
    for (size_t i = 0; i < st.params.size(); i++) {
      if (st.got[i] && st.owner[i] == st.g.rank && st.acc[st.bucket_of[i]].defined()) {
        st.params[i].mutable_grad() = st.acc_view(static_cast<int>(i));
      }
    }
    st.acc.assign(st.buckets.size(), at::Tensor());
    st.got.assign(st.params.size(), 0);
    st.open = false;
    st.armed = false;
    return nullptr;
  }
  bool was_armed = st.armed;
  st.armed = false;
  st.open = false;
  auto timeout = dp2o::dist::timeout_of(st.g, timeout_ms);
  at::NoGradGuard no_grad;
  // Start what the backward pass did not (in order, so every rank issues
  // the same sequence; a local failure, recorded, does not stop them),
  // then wait for every started bucket: a rank must not leave a
  // collective its peers are in, even after an error.
  if (failed && st.error.empty()) st.error = "dist: reducer: this rank's step failed";
  if (!was_armed && st.error.empty()) st.error = "dist: reducer: finish without prepare(sync)";
  try {
    while (!st.broken && st.next < st.buckets.size()) st.start(st.next++);
  } catch (const c10::Error &e) {
    if (st.error.empty()) st.error = e.what_without_backtrace();
  }
  if (overlapped) *overlapped = st.overlapped;
  size_t started = st.next;
  st.next = 0;
  for (size_t k = 0; k < started; k++) {
    if (!st.work[k]) continue;
    try {
      dp2o::dist::wait(st.g, "reducer", st.work[k], timeout);
      st.storage[k].div_(st.g.size);
    } catch (const c10::Error &e) {
      if (st.error.empty()) st.error = e.what_without_backtrace();
      st.broken = true;
    }
    st.work[k].reset();
  }
  size_t n = st.params.size();
  // Each parameter gets its slice back as its .grad, holding the mean; a
  // .grad it has now is a gradient that came after its bucket started.
  std::vector<at::Tensor> late(n);
  for (size_t k = 0; k < started; k++) {
    for (int i : st.buckets[k]) {
      at::Tensor &gr = st.params[i].mutable_grad();
      late[i] = gr;
      gr = st.view[i];
    }
  }
  std::string err = st.error;
  st.error.clear();
  if (st.broken) {
    // The group is out of step: no more collectives (the gradients are
    // whatever the buckets hold).
    st.broken = false;
    TORCH_CHECK(false, err);
  }
  auto any = st.exchange_flags(late, err, timeout);
  // Late gradients: their own mean over the ranks is added to the bucket's.
  late = st.reduce_late(std::move(late), any, true, timeout);
  for (size_t i = 0; i < n; i++) {
    if (late[i].defined()) st.view[i].add_(late[i]);
  }
  at::Device dev = n ? st.params[0].device() : at::Device(at::kCPU);
  for (size_t i = 0; i < n; i++) {
    // No gradient on any rank: none here either, as in one process
    // (rather than the zeros of its slice).
    if (!any[i]) st.params[i].mutable_grad() = at::Tensor();
    st.premarked[i] = !st.hooked[i];
  }
  st.learn_order(dev, timeout);
  if (buckets) *buckets = static_cast<int>(st.buckets.size());
  DP2O_CATCH
}

dp2o_err dp2o_dist_reducer_shard(dp2o_reducer h, const int *owner, int n, int *buckets) {
  DP2O_TRY
  auto &st = *static_cast<dp2o::dist::Reducer *>(h)->st;
  std::lock_guard<std::mutex> lock(st.mu);
  TORCH_CHECK(!st.open, "dist: reducer: shard between steps, not in one");
  TORCH_CHECK(n == static_cast<int>(st.params.size()), "dist: reducer: ", n, " owners for ", st.params.size(),
              " parameters");
  for (int i = 0; i < n; i++) {
    TORCH_CHECK(owner[i] >= 0 && owner[i] < st.g.size, "dist: reducer: parameter ", i, "'s owner ", owner[i],
                " is outside a world of ", st.g.size);
  }
  st.owner.assign(owner, owner + n);
  st.sharded = true;
  at::NoGradGuard no_grad;
  std::vector<int> ord = st.rebuild.empty() ? st.order : st.rebuild;
  st.rebuild.clear();
  st.build(ord);
  // Until the order of the gradients is learned, rank 0 announces it.
  st.dynamic = !st.rebuilt;
  if (buckets) *buckets = static_cast<int>(st.buckets.size());
  DP2O_CATCH
}

dp2o_err dp2o_dist_reducer_peak_buffers(dp2o_reducer h, int *out) {
  DP2O_TRY
  auto &st = *static_cast<dp2o::dist::Reducer *>(h)->st;
  std::lock_guard<std::mutex> lock(st.mu);
  *out = static_cast<int>(st.held_peak);
  DP2O_CATCH
}

void dp2o_dist_reducer_free(dp2o_reducer h) {
  auto *r = static_cast<dp2o::dist::Reducer *>(h);
  if (!r) return;
  try {
    {
      std::lock_guard<std::mutex> lock(r->st->mu);
      r->st->closed = true;
    }
    for (auto &hk : r->hooks) hk.first->del_post_hook(hk.second);
  } catch (...) {
  }
  delete r;
}

}  // extern "C"

#endif  // DP2O_C10D
