package torch

// #include "csrc/dp2o.h"
import "C"

import (
	"runtime"
	"sync"
	"sync/atomic"
)

// The garbage collector's safety net for tensors that no scope owns.
//
// Registering a runtime cleanup and stopping it again at Close takes the
// runtime's span lock twice: it was the largest single cost of a Go op whose
// result is closed at once (about 130 ns of a 1×1 add's ~350 ns overhead).
// Most such tensors are closed within a few ops, so a new unscoped tensor is
// first put in a nursery; only the ones still open when they leave it (when
// newer tensors push them out, or after a garbage collection) get the
// cleanup. Close takes a tensor out of the nursery with one compare-and-swap.
//
// The sweep runs on another goroutine than the tensor's owner, so the
// tensor's guard state is read and written atomically (but for a new
// tensor's first store, before it is published): the sweeper moves a
// tensor from guardNursery to guardBusy to guardCleanup, and Close moves it from
// guardNursery to guardNone (or stops the cleanup of a guardCleanup one);
// a Close that meets guardBusy waits for the sweeper to finish.
const (
	guardNone    uint32 = iota // no cleanup and in no nursery: scoped, or closed
	guardNursery               // in a nursery, no cleanup yet
	guardBusy                  // a sweep is registering its cleanup
	guardCleanup               // the runtime cleanup is registered
)

// cleanups holds the runtime cleanup of each guarded tensor, by handle
// (kept out of Tensor so that a Tensor stays small and pointer-free). A
// handle is unique while its tensor is open; freeHandle drops the entry
// before the shim frees the handle, so a new tensor cannot reuse the address
// while the entry exists.
var cleanups sync.Map // uintptr handle → runtime.Cleanup

// freeHandle is the runtime cleanup of a tensor never closed.
func freeHandle(h uintptr) {
	cleanups.Delete(h)
	C.dp2o_tensor_free(C.dp2o_tensor(h))
}

// The nursery is a table of slots indexed by a hash of the handle: a
// tensor put in a slot evicts the slot's previous occupant, which gets its
// cleanup if it is still open. One atomic swap per tensor, no lock and no
// shared counter (a round-robin index would be one more locked instruction
// per op, on a cache line every thread writes); a tensor stays in the
// nursery until another tensor hashes to its slot, or until the next
// garbage collection. A handle closed at once is usually reused by the
// next op's result, which then lands in the same, cache-hot slot.
const nurseryBits = 10

var nursery [1 << nurseryBits]atomic.Pointer[Tensor]

// nurserySlot is the slot of handle h (Fibonacci hashing of its address).
func nurserySlot(h uintptr) *atomic.Pointer[Tensor] {
	return &nursery[(uint64(h)*0x9E3779B97F4A7C15)>>(64-nurseryBits)]
}

// guardNew puts a new tensor, not yet seen by any other goroutine, in the
// nursery: its state needs no atomic store before the swap publishes it.
func (t *Tensor) guardNew() {
	t.guard_ = guardNursery
	t.enterNursery()
}

// enterNursery puts t (in state guardNursery) in its slot, promoting the
// tensor it evicts.
func (t *Tensor) enterNursery() {
	if old := nurserySlot(t.h).Swap(t); old != nil {
		old.promote()
	}
}

// guard registers the garbage collector's safety net for a tensor that no
// scope owns any more (kept out of its last scope, or unscoped). A tensor in
// an open scope needs none: the scope references it until Close frees it.
func (t *Tensor) guard() {
	if t.h == 0 || atomic.LoadUint32(&t.guard_) != guardNone {
		return
	}
	atomic.StoreUint32(&t.guard_, guardNursery)
	t.enterNursery()
}

// promote registers the runtime cleanup of a tensor leaving the nursery
// still open (never closed).
func (t *Tensor) promote() {
	// Most tensors leaving the nursery were closed: a plain load spares
	// them the locked compare-and-swap.
	if atomic.LoadUint32(&t.guard_) == guardNursery && atomic.CompareAndSwapUint32(&t.guard_, guardNursery, guardBusy) {
		// The owner cannot free the handle while the state is guardBusy.
		cleanups.Store(t.h, runtime.AddCleanup(t, freeHandle, t.h))
		atomic.StoreUint32(&t.guard_, guardCleanup)
	}
}

// sweepAll empties the nursery, promoting the tensors still open.
func sweepAll() {
	for i := range nursery {
		if t := nursery[i].Swap(nil); t != nil {
			t.promote()
		}
	}
}

// unguard takes t out of the safety net before its handle is freed: out of
// its nursery, or its runtime cleanup stopped.
func (t *Tensor) unguard() {
	for {
		switch atomic.LoadUint32(&t.guard_) {
		case guardNone:
			return
		case guardNursery:
			if atomic.CompareAndSwapUint32(&t.guard_, guardNursery, guardNone) {
				return
			}
		case guardBusy:
			runtime.Gosched()
		case guardCleanup:
			if c, ok := cleanups.LoadAndDelete(t.h); ok {
				c.(runtime.Cleanup).Stop()
			}
			atomic.StoreUint32(&t.guard_, guardNone)
			return
		}
	}
}

// gcSentinel is an object the program drops at once: its cleanup runs after
// each garbage collection, sweeps the nursery (so a forgotten tensor is
// freed by the next collection at the latest), frees the handles closed
// lazily and arms a new sentinel.
type gcSentinel struct {
	next *gcSentinel // a pointer keeps it out of the tiny allocator, whose blocks are freed together
}

func armSweepAfterGC() {
	runtime.AddCleanup(&gcSentinel{}, func(struct{}) {
		sweepAll()
		// Small CPU tensors closed lazily (Close) go now at the latest, even
		// if no other shim call comes.
		C.dp2o_drain_deferred()
		armSweepAfterGC()
	}, struct{}{})
}

func init() { armSweepAfterGC() }
