package testutil

// #include <malloc.h>
import "C"

import (
	"os"
	"runtime/debug"
	"strconv"
	"testing"

	"github.com/dp2osr/dp2o/torch"
)

// PeakRSSGrowth runs f and returns how far the process's resident set rose
// above its size before f, at its peak, in bytes. Go's, the CPU tensor
// cache's (torch.EmptyCPUCache) and glibc's free memory go back to the OS
// first (malloc_trim) and the kernel's peak
// (VmHWM) is reset (Linux's clear_refs), so the figure is the memory f
// itself needed at once, whatever ran before. It skips where the peak
// cannot be reset. Linux and glibc only, as the rest of the binding.
func PeakRSSGrowth(tb testing.TB, f func()) int64 {
	tb.Helper()
	ReleaseMemory()
	ResetPeak(tb)
	base := ProcStatus(tb)["VmRSS"]
	f()
	return ProcStatus(tb)["VmHWM"] - base
}

// ReleaseMemory gives back what the process holds without using it: Go's
// free heap, the CPU tensor cache (torch.EmptyCPUCache) and glibc's free
// memory (malloc_trim). A peak measured next then counts only what the code
// under test needs.
func ReleaseMemory() {
	debug.FreeOSMemory()
	torch.EmptyCPUCache()
	C.malloc_trim(0)
}

// ResetPeak makes the process's peak resident set (VmHWM) its current one
// (Linux's clear_refs 5), so that one process measures several peaks; it
// skips where the peak cannot be reset.
func ResetPeak(tb testing.TB) {
	tb.Helper()
	if err := os.WriteFile("/proc/self/clear_refs", []byte("5"), 0); err != nil {
		tb.Skipf("cannot reset the peak resident set: %v", err)
	}
}

// ReportPeakRSS runs f b.N times and reports the largest PeakRSSGrowth as
// "peak-MiB".
func ReportPeakRSS(b *testing.B, f func()) {
	b.Helper()
	var peak int64
	for i := 0; i < b.N; i++ {
		peak = max(peak, PeakRSSGrowth(b, f))
	}
	b.ReportMetric(float64(peak)/(1<<20), "peak-MiB")
}

// EnvInt is the integer in $name, def when it is unset; a benchmark's
// size knob.
func EnvInt(tb testing.TB, name string, def int) int {
	tb.Helper()
	v := os.Getenv(name)
	if v == "" {
		return def
	}
	n, err := strconv.Atoi(v)
	if err != nil {
		tb.Fatalf("%s=%q: want an integer", name, v)
	}
	return n
}
