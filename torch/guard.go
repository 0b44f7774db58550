package torch

// #include "csrc/dp2o.h"
import "C"

import (
	"runtime"
	"sync"
	"sync/atomic"
	"unsafe"
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
// tensor's guard state is atomic: the sweeper moves a tensor from
// guardNursery to guardBusy to guardCleanup, and Close moves it from
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
	C.dp2o_tensor_free(*(*C.dp2o_tensor)(unsafe.Pointer(&h)))
}

// The nursery is a ring of slots written round-robin: a tensor put in a slot
// evicts the slot's previous occupant, which gets its cleanup if it is still
// open. One atomic add and one atomic swap per tensor, no lock; a tensor
// stays in the nursery for nurserySize newer unscoped tensors at most, or
// until the next garbage collection.
const nurserySize = 1024

var (
	nurseryNext atomic.Uint64
	nursery     [nurserySize]atomic.Pointer[Tensor]
)

// guard registers the garbage collector's safety net for a tensor that no
// scope owns (new, kept out of its last scope, or unscoped). A tensor in an
// open scope needs none: the scope references it until Close frees it.
func (t *Tensor) guard() {
	if t.h == 0 || t.guard_.Load() != guardNone {
		return
	}
	t.guard_.Store(guardNursery)
	i := nurseryNext.Add(1) % nurserySize
	if old := nursery[i].Swap(t); old != nil {
		old.promote()
	}
}

// promote registers the runtime cleanup of a tensor leaving the nursery
// still open (never closed).
func (t *Tensor) promote() {
	// Most tensors leaving the nursery were closed: a plain load spares
	// them the locked compare-and-swap.
	if t.guard_.Load() == guardNursery && t.guard_.CompareAndSwap(guardNursery, guardBusy) {
		// The owner cannot free the handle while the state is guardBusy.
		cleanups.Store(t.h, runtime.AddCleanup(t, freeHandle, t.h))
		t.guard_.Store(guardCleanup)
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
		switch t.guard_.Load() {
		case guardNone:
			return
		case guardNursery:
			if t.guard_.CompareAndSwap(guardNursery, guardNone) {
				return
			}
		case guardBusy:
			runtime.Gosched()
		case guardCleanup:
			if c, ok := cleanups.LoadAndDelete(t.h); ok {
				c.(runtime.Cleanup).Stop()
			}
			t.guard_.Store(guardNone)
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
