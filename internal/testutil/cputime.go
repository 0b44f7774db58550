package testutil

import (
	"bufio"
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// CPUTime is the process's CPU time so far (user + system). Benchmarks
// report it beside wall time: on a shared machine other load inflates wall
// time, not the process's own CPU time (with one intra-op thread the two
// agree on an idle machine).
func CPUTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// ProcStatus reads the kB fields of /proc/self/status (VmRSS, VmHWM, …),
// in bytes, for the load benchmarks' memory figures.
func ProcStatus(tb testing.TB) map[string]int64 {
	tb.Helper()
	out, err := ReadProcStatus()
	if err != nil {
		tb.Fatal(err)
	}
	return out
}

// ReadProcStatus is ProcStatus for code without a testing.TB (a benchmark's
// worker process).
func ReadProcStatus() (map[string]int64, error) {
	f, err := os.Open("/proc/self/status")
	if err != nil {
		return nil, err
	}
	defer f.Close()
	out := map[string]int64{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		fs := strings.Fields(v)
		if !ok || len(fs) != 2 || fs[1] != "kB" {
			continue
		}
		if n, err := strconv.ParseInt(fs[0], 10, 64); err == nil {
			out[k] = n << 10
		}
	}
	return out, sc.Err()
}
