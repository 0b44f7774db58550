package testutil

import (
	"syscall"
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
