package dist

// #include <stdlib.h>
// #include "dist.h"
import "C"

import (
	"errors"
	"fmt"
	"sync"
	"time"
	"unsafe"

	"github.com/dp2osr/dp2o/torch"
)

// ErrClosed is returned by the methods of a closed group.
var ErrClosed = errors.New("dist: group is closed")

// Group is this process's membership of a process group. Its methods may be
// called from several goroutines (they are serialised), but every rank must
// issue the same collectives in the same order.
type Group struct {
	mu      sync.Mutex
	g       C.dp2o_group // nil for a group of one without a backend
	store   C.dp2o_store
	opts    Options
	timeout time.Duration
	closed  bool
	// exchanges counts the store exchanges (Consolidate's): their keys are
	// numbered, the same on every rank since all make them in one order.
	exchanges int
}

// nextExchange numbers a store exchange that every rank makes.
func (g *Group) nextExchange() int {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.exchanges++
	return g.exchanges
}

// FromEnv joins the group torchrun describes in the environment (see
// OptionsFromEnv); without it, it returns Single().
func FromEnv() (*Group, error) {
	if !Launched() {
		return Single(), nil
	}
	o, err := OptionsFromEnv()
	if err != nil {
		return nil, err
	}
	return New(o)
}

// Single returns a group of one process (rank 0 of 1) with no backend: its
// collectives leave tensors as they are (AllGather copies), so programs
// written for several processes run unchanged in one.
func Single() *Group {
	return &Group{opts: Options{WorldSize: 1, Device: torch.CPU, BucketBytes: DefaultBucketBytes},
		timeout: DefaultTimeout}
}

// New rendezvouses with the other ranks through the store o names and
// creates the process group. It blocks until all WorldSize processes have
// joined, or fails after o.Timeout.
func New(o Options) (*Group, error) {
	o, err := o.resolve()
	if err != nil {
		return nil, err
	}
	if !HasBackend(o.Backend) {
		have := Backends()
		return nil, fmt.Errorf("dist: backend %s is not available in this libtorch build (available: %v); "+
			"Gloo needs c10d's and Gloo's headers when the shim is built (Debian: libgloo-dev), NCCL a CUDA libtorch",
			o.Backend, have)
	}
	ms := millis(o.Timeout)
	var store C.dp2o_store
	if o.StoreFile != "" {
		cp := C.CString(o.StoreFile)
		err = errOf(C.dp2o_dist_file_store(cp, C.int(o.WorldSize), ms, &store))
		C.free(unsafe.Pointer(cp))
	} else {
		ca := C.CString(o.MasterAddr)
		server := C.int(0)
		if o.Rank == 0 && !o.LauncherStore {
			server = 1
		}
		err = errOf(C.dp2o_dist_tcp_store(ca, C.int(o.MasterPort), server, C.int(o.WorldSize), ms, &store))
		C.free(unsafe.Pointer(ca))
	}
	if err != nil {
		where := o.StoreFile
		if where == "" {
			where = fmt.Sprintf("%s:%d", o.MasterAddr, o.MasterPort)
		}
		return nil, fmt.Errorf("dist: rendezvous at %s (rank %d of %d): %w", where, o.Rank, o.WorldSize, err)
	}
	cb, ci, ch := C.CString(o.Backend), C.CString(o.GlooInterface), C.CString(o.GlooHostname)
	cp := C.CString(o.StorePrefix)
	defer C.free(unsafe.Pointer(cp))
	defer C.free(unsafe.Pointer(cb))
	defer C.free(unsafe.Pointer(ci))
	defer C.free(unsafe.Pointer(ch))
	dev := o.Device.Index
	if !o.Device.IsCUDA() {
		dev = -1
	}
	var g C.dp2o_group
	if err := errOf(C.dp2o_dist_group_new(store, cp, cb, C.int(o.Rank), C.int(o.WorldSize), ms, ci, ch, C.int(dev), &g)); err != nil {
		C.dp2o_dist_store_free(store)
		return nil, fmt.Errorf("%w (rank %d of %d)", err, o.Rank, o.WorldSize)
	}
	return &Group{g: g, store: store, opts: o, timeout: o.Timeout}, nil
}

// Rank is this process's index in the group.
func (g *Group) Rank() int { return g.opts.Rank }

// WorldSize is the number of processes in the group.
func (g *Group) WorldSize() int { return g.opts.WorldSize }

// LocalRank is this process's index on its machine.
func (g *Group) LocalRank() int { return g.opts.LocalRank }

// IsMain reports whether this is rank 0, the one that writes checkpoints
// and logs.
func (g *Group) IsMain() bool { return g.opts.Rank == 0 }

// Backend is the group's backend (Gloo or NCCL), "" for Single().
func (g *Group) Backend() string {
	if g.g == nil {
		return ""
	}
	return g.opts.Backend
}

// Device is where the group's collectives run: the device the tensors
// passed to it must be on (CPU for Gloo, the rank's GPU for NCCL).
func (g *Group) Device() torch.Device { return g.opts.Device }

// Timeout is the current collective timeout.
func (g *Group) Timeout() time.Duration {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.timeout
}

// SetTimeout changes the timeout of the following collectives (d > 0).
func (g *Group) SetTimeout(d time.Duration) {
	if d <= 0 {
		return
	}
	g.mu.Lock()
	g.timeout = d
	g.mu.Unlock()
}

// Close leaves the group and frees it. Rank 0 serves the TCP store, so it
// should close last (Barrier first) when the others still need it. Close is
// idempotent.
func (g *Group) Close() error {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.closed {
		return nil
	}
	g.closed = true
	if g.g != nil {
		C.dp2o_dist_group_free(g.g)
		g.g = nil
	}
	if g.store != nil {
		C.dp2o_dist_store_free(g.store)
		g.store = nil
	}
	return nil
}

// lock takes the group's lock for one call; the caller unlocks. It fails on
// a closed group.
func (g *Group) lock() error {
	g.mu.Lock()
	if g.closed {
		g.mu.Unlock()
		return ErrClosed
	}
	return nil
}

// StoreSet writes a value to the group's rendezvous store, where every rank
// can read it with StoreGet.
func (g *Group) StoreSet(key string, value []byte) error {
	if err := g.lock(); err != nil {
		return err
	}
	defer g.mu.Unlock()
	if g.store == nil {
		return fmt.Errorf("dist: a single-process group has no store")
	}
	ck := C.CString(key)
	defer C.free(unsafe.Pointer(ck))
	var p unsafe.Pointer
	if len(value) > 0 {
		p = C.CBytes(value)
		defer C.free(p)
	}
	return errOf(C.dp2o_dist_store_set(g.store, ck, p, C.int64_t(len(value))))
}

// StoreGet reads a value from the rendezvous store, waiting up to the
// group's timeout for some rank to set it.
func (g *Group) StoreGet(key string) ([]byte, error) {
	if err := g.lock(); err != nil {
		return nil, err
	}
	defer g.mu.Unlock()
	if g.store == nil {
		return nil, fmt.Errorf("dist: a single-process group has no store")
	}
	ck := C.CString(key)
	defer C.free(unsafe.Pointer(ck))
	var p unsafe.Pointer
	var n C.int64_t
	if err := errOf(C.dp2o_dist_store_get(g.store, ck, &p, &n)); err != nil {
		return nil, err
	}
	defer C.free(p)
	return C.GoBytes(p, C.int(n)), nil
}
