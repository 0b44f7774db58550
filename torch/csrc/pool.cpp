// pool.cpp: the per-thread free lists of handle objects (dp2o_owned).
//
// Every op makes one handle and every Close or scope frees one. With glibc's
// allocator a scope freeing a thousand handles at once overflows its
// per-thread cache (seven chunks a size), and the chunks go through the
// shared bins, to be split and merged again by the next thousand ops. A
// thread keeps up to kPoolMax freed handle objects on its own list instead
// and makes new handles from it: a push and a pop, no lock, no allocator.
// The list is freed when the thread exits.
#include "shim.h"

#include <new>

namespace dp2o {
namespace {

constexpr int kPoolMax = 4096;

struct Pool {
  void *head;  // a freed object's first word links to the next
  int n;
  int state;  // 0 unregistered, 1 registered, 2 the thread is exiting
};

// Zero-initialised and trivially destructible: reaching it needs no guard.
thread_local Pool tl_pool __attribute__((tls_model("initial-exec")));

struct PoolReleaser {
  ~PoolReleaser() {
    tl_pool.state = 2;
    while (tl_pool.head != nullptr) {
      void *m = tl_pool.head;
      tl_pool.head = *static_cast<void **>(m);
      ::operator delete(m);
    }
    tl_pool.n = 0;
  }
};
thread_local PoolReleaser tl_pool_releaser;

}  // namespace

void *owned_memory() {
  Pool &p = tl_pool;
  if (void *m = p.head) {
    p.head = *static_cast<void **>(m);
    p.n--;
    return m;
  }
  return ::operator new(sizeof(Owned));
}

void owned_delete(Owned *o) {
  o->~Owned();
  Pool &p = tl_pool;
  if (p.state != 1) {
    if (p.state == 2) {
      ::operator delete(o);
      return;
    }
    (void)&tl_pool_releaser;  // odr-use: constructs it, so its destructor runs at thread exit
    p.state = 1;
  }
  if (p.n >= kPoolMax) {
    ::operator delete(o);
    return;
  }
  *reinterpret_cast<void **>(o) = p.head;
  p.head = o;
  p.n++;
}

}  // namespace dp2o
