package dist

// #include "dist.h"
import "C"

import (
	"fmt"
	"sync"

	"github.com/dp2osr/dp2o/torch"
	"github.com/dp2osr/dp2o/torch/optim"
)

// Reducer averages gradients over the ranks while the backward pass runs,
// as DistributedDataParallel does: a hook after each parameter's gradient
// accumulation marks it ready, and each bucket (about BucketBytes each)
// starts its all-reduce as soon as all its gradients are in, buckets always
// in the same order on every rank. The buckets take the parameters in
// reverse order for the first step, then, as DDP rebuilds them, in the
// order rank 0 saw their gradients come: a model creates its parameters in
// one order and may use them in another (a FLUX ControlNet creates
// controlnet_x_embedder last and uses it first, so its gradient comes
// last, and in reverse order its bucket, the first, would hold back every
// other until the backward pass ends).
//
//	r, err := g.NewReducer(params) // once
//	for step := range steps {
//		for m := range accum {
//			r.Prepare(m == accum-1) // only the last micro-batch's backward reduces
//			loss.Backward(nil)
//		}
//		if err := r.Finish(); err != nil { ... } // means are in each .grad
//		opt.Step()
//	}
//
// Every parameter must be a leaf that requires grad, and every rank must
// pass the same list. The gradients are those of one process with the
// whole batch, whatever the graph does:
//
//   - A parameter with no gradient on any rank gets none (not zeros), as
//     in one process, so AdamW leaves it alone (its slice of the bucket,
//     zeros, is reduced with the rest).
//   - A parameter with a gradient on some ranks only gets the mean with
//     zeros for the others.
//   - A parameter that got no gradient in a rank's last synchronised
//     backward pass does not hold its bucket back in the next one (as
//     DDP's static graph): the last block of a FLUX ControlNet has weights
//     nothing reads, and they are in the first bucket.
//   - A gradient accumulated after its bucket started (such a parameter
//     used after all, or one used both inside and outside a checkpointed
//     function) lands in a fresh tensor, never in memory in flight, and its
//     mean over the ranks is added at Finish, in one more all-reduce.
//   - A step that fails on one rank (a copy out of memory, a misuse) fails
//     on every rank, none left waiting in a collective, and the next step
//     runs as usual; a failed collective leaves the group out of step.
//
// Finish also all-reduces two flags per parameter (which have gradients,
// which got some late) and one per rank's failure.
//
// The gradients live in the reducer's buckets, as with DDP's
// gradient_as_bucket_view: from the first Prepare of a step each .grad is
// a view of its bucket's buffer, the backward pass accumulates into it and
// the all-reduce runs on it in place, so averaging costs no second copy of
// the gradients. The buffers are allocated by the first Prepare, and again
// in the gradients' order by the second step's first Prepare (after the
// optimizer has dropped the gradients the old ones go first, so there is
// never a second set), and held until the reducer is dropped after Close.
// A .grad
// taken from a parameter is overwritten in the next step, when its
// parameter's first gradient comes or its bucket starts (clone it to keep
// it).
//
// With ShardGradients (ZeRO stage 2) each gradient ends on one rank only,
// its owner's, and the whole set of gradients never exists on any rank.
type Reducer struct {
	mu         sync.Mutex
	r          C.dp2o_reducer
	g          *Group
	buckets    int
	overlapped int
	params     []*torch.Tensor
	sharded    bool
}

// NewReducer registers the hooks on params' gradient accumulators.
func (g *Group) NewReducer(params []*torch.Tensor) (*Reducer, error) {
	if err := g.lock(); err != nil {
		return nil, err
	}
	defer g.mu.Unlock()
	hs, err := handles("reducer", params)
	if err != nil {
		return nil, err
	}
	red := &Reducer{g: g, params: append([]*torch.Tensor(nil), params...)}
	if g.g == nil {
		return red, nil
	}
	var nb C.int
	err = errOf(C.dp2o_dist_reducer_new(g.g, listPtr(hs), C.int(len(hs)), C.int64_t(g.opts.BucketBytes), &red.r, &nb))
	keep(params)
	if err != nil {
		return nil, err
	}
	red.buckets = int(nb)
	return red, nil
}

// Prepare arms the reducer for the next backward pass when sync is true
// (the last micro-batch of an optimizer step); with sync false that
// backward pass only accumulates.
func (r *Reducer) Prepare(sync bool) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.r == nil {
		if r.g.g != nil {
			return ErrClosed
		}
		return nil
	}
	return errOf(C.dp2o_dist_reducer_prepare(r.r, cbool(sync), millis(r.g.Timeout())))
}

// Finish, after the armed backward pass, starts the buckets that have not
// started, waits for all of them and leaves each gradient's mean over the
// ranks in its .grad. A step that failed on some rank (Abort, or a local
// error) fails every rank's Finish and leaves the group in step; a
// collective's own error (a peer gone, the timeout) leaves it out of step.
func (r *Reducer) Finish() error { return r.finish(false) }

// Abort, instead of Finish, closes a step that failed on this rank (a
// batch whose forward or backward pass returned an error): it takes part
// in the step's collectives as Finish does, and every rank's Finish or
// Abort returns an error, rather than the others averaging a partial
// gradient or waiting for this rank until the timeout.
func (r *Reducer) Abort() error { return r.finish(true) }

func (r *Reducer) finish(failed bool) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.r == nil {
		if r.g.g != nil {
			return ErrClosed
		}
		return nil
	}
	var over, nb C.int
	err := errOf(C.dp2o_dist_reducer_finish(r.r, millis(r.g.Timeout()), cbool(failed), &over, &nb))
	r.overlapped = int(over)
	if err == nil {
		r.buckets = int(nb)
	}
	keep(r.params)
	return err
}

// Buckets is the number of buckets the gradients are reduced in, as of the
// last Finish (the second step's first Prepare rebuilds them in the order
// the first step's gradients came).
func (r *Reducer) Buckets() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.buckets
}

// StartedInBackward is how many buckets of the last Finish had started
// while the backward pass still had gradients to produce: the ones whose
// all-reduce overlapped with it (at most Buckets()−1; the last bucket
// completes with the last gradient).
func (r *Reducer) StartedInBackward() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.overlapped
}

// ShardGradients gives each gradient to one rank (owner[i] for the i-th
// parameter; ShardedOptimizer.Owners gives them), as ZeRO stage 2 does,
// from the next step on. Each bucket then holds one owner's parameters.
// Every backward pass reduces each bucket to its owner only, the
// accumulation steps' passes too (Prepare(false) arms them as well; sync
// only marks the step's last), instead of all-reducing the last pass's
// accumulated gradients: a bucket's buffer exists from its first gradient
// in the pass until its reduce is done, when the owner adds it to its sum
// over the step and every rank frees it; beyond two reduces in flight the
// backward pass waits for the oldest. So a rank holds its own share of the
// gradients and a few buckets, not the whole set (5.8 GB for C-FLUX's
// ControlNet, 0.7 per GPU on 8), for one reduce per bucket and
// accumulation step where unsharded there is one all-reduce per step.
//
// The first step, before the reducer knows the order the gradients come
// in, must not hold them all either: there rank 0 starts each bucket as
// soon as its gradients are in, in whatever order, and announces it to the
// others (a small broadcast before each reduce), who start the buckets in
// rank 0's order; from the second step on the buckets follow the order
// learned in the first, as unsharded. A rank whose pass has failed takes
// part in the rest of its reduces through a scratch buffer the size of the
// largest bucket, made between steps, instead of allocating more.
//
// After Finish each owned parameter with a gradient on some rank holds the
// mean over the ranks in its .grad, as unsharded (up to rounding: the sum
// runs pass by pass); the others have none, and between a step's passes no
// parameter has a .grad. Clip with ClipGradNorm, which takes the norm over
// all ranks. Each pass ends, with one small all-reduce of flags, at the
// next Prepare or at Finish: a pass that fails on one rank (Abort, or a
// local error) fails that Prepare or Finish on every rank, and the step is
// dropped. Call it between steps, with the same owners on every rank, and
// issue no other collective on the group between a pass's backward and
// the next Prepare or Finish (its last reduces, and in the first step a
// posted receipt of rank 0's order, are still pending then). On NCCL the
// first step's followers read each announcement on the host, which ties
// their backward pass to the reduces for that step.
func (r *Reducer) ShardGradients(owner []int) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(owner) != len(r.params) {
		return fmt.Errorf("dist: reducer: %d owners for %d parameters", len(owner), len(r.params))
	}
	world := r.g.WorldSize()
	for i, o := range owner {
		if o < 0 || o >= world {
			return fmt.Errorf("dist: reducer: parameter %d's owner %d is outside a world of %d", i, o, world)
		}
	}
	if r.r == nil {
		if r.g.g != nil {
			return ErrClosed
		}
		r.sharded = true
		return nil
	}
	co := make([]C.int, len(owner))
	for i, o := range owner {
		co[i] = C.int(o)
	}
	var nb C.int
	var p *C.int
	if len(co) > 0 {
		p = &co[0]
	}
	if err := errOf(C.dp2o_dist_reducer_shard(r.r, p, C.int(len(co)), &nb)); err != nil {
		return err
	}
	r.sharded = true
	r.buckets = int(nb)
	return nil
}

// PeakBuffers is, with sharded gradients, the most bucket buffers the
// reducer held at once in the open or last step (the owners' sums not
// counted): what the backward pass held beyond its share of the
// gradients. At most about 2·MaxInFlight + 1 whatever the ranks' speeds;
// 0 unsharded, whose buffers are the gradients themselves.
func (r *Reducer) PeakBuffers() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.r == nil {
		return 0
	}
	var n C.int
	if errOf(C.dp2o_dist_reducer_peak_buffers(r.r, &n)) != nil {
		return 0
	}
	return int(n)
}

// MaxInFlight is how many reduces a sharded reducer keeps in flight before
// the backward pass waits for the oldest.
const MaxInFlight = 2

// ClipGradNorm clips the step's gradients as optim.ClipGradNorm does,
// over every rank's share when they are sharded (Group.ClipShardedGradNorm,
// a collective) and locally otherwise, and returns the total norm.
func (r *Reducer) ClipGradNorm(params []optim.Param, maxNorm, normType float64) (float64, error) {
	r.mu.Lock()
	sharded := r.sharded
	r.mu.Unlock()
	if !sharded {
		return optim.ClipGradNorm(params, maxNorm, normType)
	}
	ts := make([]*torch.Tensor, len(params))
	for i, p := range params {
		ts[i] = p.Tensor
	}
	return r.g.ClipShardedGradNorm(ts, maxNorm, normType)
}

// Close removes the hooks. Close the reducer before its group.
func (r *Reducer) Close() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.r != nil {
		C.dp2o_dist_reducer_free(r.r)
		r.r = nil
	}
	r.params = nil
	return nil
}

func cbool(b bool) C.int {
	if b {
		return 1
	}
	return 0
}
