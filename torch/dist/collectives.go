package dist

// #include <stdlib.h>
// #include "dist.h"
import "C"

import (
	"fmt"
	"unsafe"

	"github.com/dp2osr/dp2o/torch"
)

// ReduceOp is how AllReduce combines the ranks' tensors.
type ReduceOp int

// Reductions. Average is a sum followed by a division by the world size
// (Gloo has no native average), so it needs floating-point tensors.
const (
	Sum ReduceOp = iota
	Average
	Max
	Min
)

// String names the reduction.
func (op ReduceOp) String() string {
	switch op {
	case Sum:
		return "sum"
	case Average:
		return "average"
	case Max:
		return "max"
	case Min:
		return "min"
	}
	return fmt.Sprintf("ReduceOp(%d)", int(op))
}

// AllReduce replaces each tensor, on every rank, by its reduction over the
// ranks, in place. Tensors must be contiguous and on Device().
func (g *Group) AllReduce(op ReduceOp, ts ...*torch.Tensor) error {
	if op < Sum || op > Min {
		return fmt.Errorf("dist: all_reduce: unknown reduction %v", op)
	}
	if err := g.lock(); err != nil {
		return err
	}
	defer g.mu.Unlock()
	hs, err := handles("all_reduce", ts)
	if err != nil {
		return err
	}
	if g.g == nil {
		if op == Average {
			for _, t := range ts {
				if !t.DType().IsFloat() {
					return fmt.Errorf("dist: average of a %v tensor (only floating types can be averaged in place)", t.DType())
				}
			}
		}
		return nil
	}
	defer keep(ts)
	return errOf(C.dp2o_dist_all_reduce(g.g, listPtr(hs), C.int(len(hs)), C.int(op), millis(g.timeout)))
}

// AllReduceFloat64s reduces a few numbers over the ranks (a loss to log, a
// count) and returns the result.
func (g *Group) AllReduceFloat64s(op ReduceOp, vs ...float64) ([]float64, error) {
	if len(vs) == 0 {
		return nil, nil
	}
	var out []float64
	var rerr error
	err := torch.Try(func() {
		s := torch.NewScope()
		defer s.Close()
		t := torch.FromSlice(vs, int64(len(vs)))
		if g.opts.Device.IsCUDA() {
			t = t.ToDevice(g.opts.Device)
		}
		if rerr = g.AllReduce(op, t); rerr == nil {
			out = t.Float64s()
		}
	})
	if rerr != nil {
		return nil, rerr
	}
	return out, err
}

// Any reports whether flag is true on some rank: one small all-reduce,
// which also waits for every rank to reach it. The ranks stop together
// with it when one of them fails or is interrupted.
func (g *Group) Any(flag bool) (bool, error) {
	v := 0.0
	if flag {
		v = 1
	}
	r, err := g.AllReduceFloat64s(Max, v)
	if err != nil {
		return false, err
	}
	return r[0] > 0, nil
}

// Broadcast copies rank root's tensors into the same tensors of every other
// rank, in place. Shapes and dtypes must agree across ranks.
func (g *Group) Broadcast(root int, ts ...*torch.Tensor) error {
	if root < 0 || root >= g.WorldSize() {
		return fmt.Errorf("dist: broadcast root %d outside a world of %d", root, g.WorldSize())
	}
	if err := g.lock(); err != nil {
		return err
	}
	defer g.mu.Unlock()
	hs, err := handles("broadcast", ts)
	if err != nil || g.g == nil {
		return err
	}
	defer keep(ts)
	return errOf(C.dp2o_dist_broadcast(g.g, listPtr(hs), C.int(len(hs)), C.int(root), millis(g.timeout)))
}

// AllGather returns every rank's t, in rank order, as new tensors (the
// caller closes them). t must have the same shape and dtype on every rank.
func (g *Group) AllGather(t *torch.Tensor) ([]*torch.Tensor, error) {
	if err := g.lock(); err != nil {
		return nil, err
	}
	defer g.mu.Unlock()
	hs, err := handles("all_gather", []*torch.Tensor{t})
	if err != nil {
		return nil, err
	}
	if g.g == nil {
		var c *torch.Tensor
		err := torch.Try(func() {
			d := t.Detach()
			defer d.Close()
			c = d.Clone()
		})
		if err != nil {
			return nil, fmt.Errorf("dist: all_gather: %w", err)
		}
		return []*torch.Tensor{c}, nil
	}
	var outs *C.dp2o_tensor
	var n C.int
	err = errOf(C.dp2o_dist_all_gather(g.g, hs[0], millis(g.timeout), &outs, &n))
	keep([]*torch.Tensor{t})
	if err != nil {
		return nil, err
	}
	defer C.free(unsafe.Pointer(outs))
	res := make([]*torch.Tensor, int(n))
	for i, h := range unsafe.Slice(outs, int(n)) {
		res[i] = torch.FromUnsafeHandle(uintptr(h))
	}
	return res, nil
}

// Barrier returns once every rank has called it.
func (g *Group) Barrier() error {
	if err := g.lock(); err != nil {
		return err
	}
	defer g.mu.Unlock()
	if g.g == nil {
		return nil
	}
	return errOf(C.dp2o_dist_barrier(g.g, millis(g.timeout)))
}
