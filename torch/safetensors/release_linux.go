package safetensors

import (
	"os"
	"syscall"
	"unsafe"
)

// releasePages drops the whole pages inside b, a part of a read-only
// shared file mapping, from this process's address space
// (MADV_DONTNEED): they leave its resident set, the page cache keeps
// them, and a later read faults them back in.
func releasePages(b []byte) {
	if len(b) == 0 {
		return
	}
	page := uintptr(os.Getpagesize())
	start := uintptr(unsafe.Pointer(&b[0]))
	lo := (start + page - 1) &^ (page - 1)
	hi := (start + uintptr(len(b))) &^ (page - 1)
	if hi <= lo {
		return
	}
	syscall.Madvise(b[lo-start:hi-start], syscall.MADV_DONTNEED)
}
