package dist

// #include <stdlib.h>
// #include "dist.h"
import "C"

import (
	"fmt"
	"sync"
	"time"
	"unsafe"
)

// StoreServer is a TCP store served by a launcher for the workers it
// starts, as torchrun itself does: the workers get
// TORCHELASTIC_USE_AGENT_STORE=True with MASTER_ADDR/MASTER_PORT pointing at
// it, and rank 0 connects to it instead of serving its own.
type StoreServer struct {
	mu sync.Mutex
	s  C.dp2o_store
}

// ServeStore starts a TCP store on host:port. It does not wait for
// workers; timeout bounds the store's own operations.
func ServeStore(host string, port int, timeout time.Duration) (*StoreServer, error) {
	if timeout <= 0 {
		timeout = DefaultTimeout
	}
	ch := C.CString(host)
	defer C.free(unsafe.Pointer(ch))
	var s C.dp2o_store
	if err := errOf(C.dp2o_dist_tcp_store(ch, C.int(port), 1, 0, millis(timeout), &s)); err != nil {
		return nil, fmt.Errorf("dist: serving a store at %s:%d: %w", host, port, err)
	}
	return &StoreServer{s: s}, nil
}

// Close stops serving the store. It is idempotent.
func (s *StoreServer) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.s != nil {
		C.dp2o_dist_store_free(s.s)
		s.s = nil
	}
	return nil
}
