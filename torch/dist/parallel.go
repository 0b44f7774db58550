package dist

// #include "dist.h"
import "C"

import (
	"fmt"

	"github.com/dp2osr/dp2o/torch"
)

// BroadcastParameters copies rank 0's values of params into every rank's
// (in place, outside autograd), flattened into buckets of BucketBytes: call
// it once after building the model and before the first step, so every rank
// starts from the same weights. Each rank must pass the same list.
func (g *Group) BroadcastParameters(params []*torch.Tensor) error {
	return g.BroadcastFrom(0, params)
}

// BroadcastFrom copies rank root's values of ts into every rank's (in
// place, outside autograd), flattened into buckets of BucketBytes, two in
// flight. Each rank must pass tensors of the same shapes and dtypes, in
// the same order.
func (g *Group) BroadcastFrom(root int, ts []*torch.Tensor) error {
	if err := g.lock(); err != nil {
		return err
	}
	defer g.mu.Unlock()
	if root < 0 || root >= g.WorldSize() {
		return fmt.Errorf("dist: broadcast from rank %d in a world of %d", root, g.WorldSize())
	}
	hs, err := handles("broadcast", ts)
	if err != nil || g.g == nil {
		return err
	}
	defer keep(ts)
	return errOf(C.dp2o_dist_broadcast_coalesced(g.g, listPtr(hs), C.int(len(hs)), C.int(root),
		C.int64_t(g.opts.BucketBytes), millis(g.timeout)))
}

// AverageGradients replaces each parameter's gradient by its mean over the
// ranks: call it after the backward pass and before the optimizer step.
// Gradients are flattened into buckets of about BucketBytes (25 MB, as
// DistributedDataParallel), one all-reduce each, two in flight while the
// next is packed; the reduction runs after the whole backward pass (a
// Reducer overlaps it with the backward pass instead). A parameter that has a gradient on some ranks only
// gets a zero gradient on the others first; one with no gradient anywhere
// stays without. Every rank must pass the same list.
func (g *Group) AverageGradients(params []*torch.Tensor) error {
	_, err := g.averageGradients(params, false)
	return err
}

// averageGradients is AverageGradients returning the number of buckets;
// failed says this rank's step failed, which makes every rank's call
// return an error.
func (g *Group) averageGradients(params []*torch.Tensor, failed bool) (int, error) {
	if err := g.lock(); err != nil {
		return 0, err
	}
	defer g.mu.Unlock()
	hs, err := handles("average_gradients", params)
	if err != nil || g.g == nil {
		return 0, err
	}
	defer keep(params)
	var nb C.int
	err = errOf(C.dp2o_dist_average_gradients(g.g, listPtr(hs), C.int(len(hs)), C.int64_t(g.opts.BucketBytes),
		millis(g.timeout), cbool(failed), &nb))
	return int(nb), err
}

// SetBucketBytes changes the bucket size of AverageGradients and
// BroadcastParameters (n > 0).
func (g *Group) SetBucketBytes(n int64) {
	if n <= 0 {
		return
	}
	g.mu.Lock()
	g.opts.BucketBytes = n
	g.mu.Unlock()
}
