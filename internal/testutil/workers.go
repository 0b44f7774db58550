package testutil

import (
	"bytes"
	"context"
	"encoding/json"
	"net"
	"os"
	"os/exec"
	"strconv"
	"testing"
	"time"
)

// RunWorker makes a test binary double as a worker process: called first
// in TestMain, it does nothing unless the environment variable env holds a
// JSON list of flags; then it runs run with them as this process's whole
// job, writes its output to stdout (and the error to stderr) and exits, 1
// on error.
func RunWorker(env string, run func(args ...string) (string, error)) {
	a := os.Getenv(env)
	if a == "" {
		return
	}
	var args []string
	if err := json.Unmarshal([]byte(a), &args); err != nil {
		os.Stderr.WriteString("worker flags: " + err.Error() + "\n")
		os.Exit(2)
	}
	msg, err := run(args...)
	os.Stdout.WriteString(msg)
	if err != nil {
		os.Stderr.WriteString(err.Error() + "\n")
		os.Exit(1)
	}
	os.Exit(0)
}

// Worker is one process RunWorkers starts: its flags, and its environment
// on top of the test's own.
type Worker struct {
	Args []string
	Env  []string
}

// RunWorkers starts one copy of the test binary per worker, all at once, as
// workers of RunWorker's env, waits for every one (at most timeout) and
// returns each one's output (stdout and stderr) and exit error.
func RunWorkers(tb testing.TB, timeout time.Duration, env string, ws ...Worker) (outs []string, errs []error) {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmds := make([]*exec.Cmd, len(ws))
	bufs := make([]*bytes.Buffer, len(ws))
	for i, w := range ws {
		js, err := json.Marshal(w.Args)
		if err != nil {
			tb.Fatal(err)
		}
		cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^$")
		cmd.Env = append(append(os.Environ(), env+"="+string(js)), w.Env...)
		bufs[i] = &bytes.Buffer{}
		cmd.Stdout, cmd.Stderr = bufs[i], bufs[i]
		if err := cmd.Start(); err != nil {
			tb.Fatalf("start worker %d: %v", i, err)
		}
		cmds[i] = cmd
	}
	outs, errs = make([]string, len(ws)), make([]error, len(ws))
	for i, cmd := range cmds {
		errs[i] = cmd.Wait()
		outs[i] = bufs[i].String()
	}
	return outs, errs
}

// TorchrunEnv is the environment torchrun gives rank of world (RANK,
// LOCAL_RANK, WORLD_SIZE), followed by extra.
func TorchrunEnv(rank, world int, extra ...string) []string {
	return append([]string{"RANK=" + strconv.Itoa(rank), "LOCAL_RANK=" + strconv.Itoa(rank),
		"WORLD_SIZE=" + strconv.Itoa(world)}, extra...)
}

// FreePort asks the kernel for a free TCP port on the loopback interface
// (for a c10d store the workers meet at).
func FreePort(tb testing.TB) int {
	tb.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatalf("free port: %v", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}
