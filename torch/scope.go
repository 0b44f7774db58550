package torch

// #include "csrc/dp2o.h"
import "C"

import (
	"slices"
	"sync"
	"sync/atomic"

	"github.com/petermattis/goid"
)

// Scope collects the tensors that one goroutine creates between NewScope and
// Close, and frees them at Close, except those moved out with Keep. Scopes
// nest; a kept tensor moves to the enclosing scope (or to no scope, when
// this is the outermost one). Tensors made by other goroutines are not
// collected: each goroutine has its own stack of scopes.
//
//	s := torch.NewScope()
//	defer s.Close()
//	h := x.Matmul(w).Add(b).Relu()
//	return s.Keep(h)
type Scope struct {
	tensors []*Tensor
	parent  *Scope
	gid     int64
	id      uint64 // what the tensors it owns record (Tensor.scope)
	closed  bool
}

var (
	activeScopes atomic.Int64
	scopeTops    sync.Map // goroutine id → *Scope (innermost)
	scopeIDs     atomic.Uint64
	// lastTop caches the innermost scope of the goroutine that last
	// changed its scopes, so that a goroutine making tensors in a loop
	// finds its scope without a map lookup. Only a goroutine's own
	// NewScope and Close store its scopes here, each time its innermost
	// scope changes, so a cached scope whose gid is the caller's is the
	// caller's current innermost scope.
	lastTop atomic.Pointer[Scope]

	// Reused lists: a scope's tensors, and the handles Close frees.
	scopeLists  sync.Pool // *[]*Tensor
	handleLists sync.Pool // *[]C.uintptr_t
)

// maxPooledList is the longest list kept for reuse.
const maxPooledList = 1 << 16

func currentScope() *Scope {
	gid := goid.Get()
	if s := lastTop.Load(); s != nil && s.gid == gid {
		return s
	}
	if v, ok := scopeTops.Load(gid); ok {
		return v.(*Scope)
	}
	return nil
}

// NewScope opens a scope on the calling goroutine.
func NewScope() *Scope {
	gid := goid.Get()
	s := &Scope{gid: gid, id: scopeIDs.Add(1)}
	if l, ok := scopeLists.Get().(*[]*Tensor); ok {
		s.tensors = (*l)[:0]
	}
	if v, ok := scopeTops.Load(gid); ok {
		s.parent = v.(*Scope)
	}
	scopeTops.Store(gid, s)
	lastTop.Store(s)
	activeScopes.Add(1)
	return s
}

// openParent is the nearest enclosing scope that is still open (scopes
// closed out of order are skipped).
func (s *Scope) openParent() *Scope {
	p := s.parent
	for p != nil && p.closed {
		p = p.parent
	}
	return p
}

// Keep moves tensors out of the scope into the enclosing one, so Close
// leaves them alive. It returns its first argument for chaining.
func (s *Scope) Keep(ts ...*Tensor) *Tensor {
	p := s.openParent()
	for _, t := range ts {
		if t == nil || t.scope != s.id {
			continue
		}
		t.scope = 0
		if p != nil {
			t.scope = p.id
			p.tensors = append(p.tensors, t)
		} else {
			t.guard()
		}
	}
	if len(ts) == 0 {
		return nil
	}
	return ts[0]
}

// KeepAll is Keep for a slice.
func (s *Scope) KeepAll(ts []*Tensor) []*Tensor {
	s.Keep(ts...)
	return ts
}

// Len is the number of tensors the scope still owns.
func (s *Scope) Len() int {
	n := 0
	for _, t := range s.tensors {
		if t.scope == s.id && !t.Closed() {
			n++
		}
	}
	return n
}

// Close frees every tensor the scope still owns and makes the enclosing
// scope current again. It is idempotent.
func (s *Scope) Close() {
	if s == nil || s.closed {
		return
	}
	s.closed = true
	// One cgo call frees every handle the scope still owns.
	hp, _ := handleLists.Get().(*[]C.uintptr_t)
	if hp == nil {
		hp = new([]C.uintptr_t)
	}
	hs := (*hp)[:0]
	for _, t := range s.tensors {
		if t.scope == s.id && t.h != 0 {
			t.unguard() // a no-op for a scoped tensor, kept for safety
			hs = append(hs, C.uintptr_t(t.h))
			t.h = 0
			t.scope = 0
		}
	}
	if len(hs) > 0 {
		C.dp2o_tensor_free_many(&hs[0], C.int64_t(len(hs)))
	}
	// The two lists go back to their pools for the next scopes (a loop
	// opening a scope per step then allocates neither).
	if cap(hs) <= maxPooledList {
		*hp = hs
		handleLists.Put(hp)
	}
	if l := s.tensors; cap(l) <= maxPooledList {
		clear(l)
		l = l[:0]
		scopeLists.Put(&l)
	}
	s.tensors = nil
	if v, ok := scopeTops.Load(s.gid); ok && v.(*Scope) == s {
		if p := s.openParent(); p != nil {
			scopeTops.Store(s.gid, p)
			lastTop.Store(p)
		} else {
			scopeTops.Delete(s.gid)
			lastTop.CompareAndSwap(s, nil)
		}
	}
	activeScopes.Add(-1)
}

// Scoped runs f in a new scope and keeps only the tensor it returns.
func Scoped(f func() *Tensor) *Tensor {
	s := NewScope()
	defer s.Close()
	return s.Keep(f())
}

// ScopedList runs f in a new scope and keeps only the tensors it returns.
func ScopedList(f func() []*Tensor) []*Tensor {
	s := NewScope()
	defer s.Close()
	return s.KeepAll(f())
}

// Then returns f(t), run in a scope of its own so that f's temporaries are
// freed when it returns, and closes t: a chain of steps or a loop over
// layers, h = torch.Then(h, layer.Forward), holds one step's tensors at a
// time, as reference counting frees them in PyTorch (not every layer's
// until the enclosing scope closes). t is left open when it is one of keep
// (the caller's input, a feature returned later) or when f returns t
// itself. Autograd keeps what the backward pass needs of a closed handle.
func Then(t *Tensor, f func(*Tensor) *Tensor, keep ...*Tensor) *Tensor {
	out := Scoped(func() *Tensor { return f(t) })
	if out != t && !slices.Contains(keep, t) {
		t.Close()
	}
	return out
}

// Unscope removes t from whatever scope owns it: the caller now closes it.
// Long-lived tensors (parameters, optimizer state) are unscoped.
func Unscope(t *Tensor) *Tensor {
	if t != nil {
		t.scope = 0
		t.guard()
	}
	return t
}
