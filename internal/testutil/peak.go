package testutil

// #include <malloc.h>
import "C"

import (
	"os"
	"runtime/debug"
	"testing"
)

// PeakRSSGrowth runs f and returns how far the process's resident set rose
// above its size before f, at its peak, in bytes. Go's and glibc's free
// memory go back to the OS first (malloc_trim) and the kernel's peak
// (VmHWM) is reset (Linux's clear_refs), so the figure is the memory f
// itself needed at once, whatever ran before. It skips where the peak
// cannot be reset. Linux and glibc only, as the rest of the binding.
func PeakRSSGrowth(tb testing.TB, f func()) int64 {
	tb.Helper()
	debug.FreeOSMemory()
	C.malloc_trim(0)
	if err := os.WriteFile("/proc/self/clear_refs", []byte("5"), 0); err != nil {
		tb.Skipf("cannot reset the peak resident set: %v", err)
	}
	base := ProcStatus(tb)["VmRSS"]
	f()
	return ProcStatus(tb)["VmHWM"] - base
}
