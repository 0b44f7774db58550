package dist

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"testing"
	"time"

	"github.com/dp2osr/dp2o/internal/testutil"
	"github.com/dp2osr/dp2o/torch"
)

// The test binary is also the worker program: started with workerEnv set it
// runs that scenario as one rank (environment as torchrun sets it) and exits.
const (
	workerEnv = "DP2O_DIST_TEST_WORKER"
	dirEnv    = "DP2O_DIST_TEST_DIR"
)

func TestMain(m *testing.M) {
	if s := os.Getenv(workerEnv); s != "" {
		os.Exit(runWorker(s))
	}
	os.Exit(m.Run())
}

// rankResult is how one worker process ended.
type rankResult struct {
	err    error // from Wait: nil for exit status 0
	output string
}

// launch runs world workers of scenario on localhost, as torchrun would
// (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT), plus env, and
// kills them all after deadline. It returns each rank's outcome and dir,
// the folder the workers share.
func launch(t testing.TB, scenario string, world int, deadline time.Duration, env ...string) ([]rankResult, string) {
	t.Helper()
	dir := t.TempDir()
	port := testutil.FreePort(t)
	ctx, cancel := context.WithTimeout(context.Background(), deadline)
	defer cancel()
	cmds := make([]*exec.Cmd, world)
	outs := make([]*bytes.Buffer, world)
	for r := range world {
		cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^$")
		cmd.Env = append(os.Environ(),
			workerEnv+"="+scenario, dirEnv+"="+dir,
			"RANK="+strconv.Itoa(r), "LOCAL_RANK="+strconv.Itoa(r), "WORLD_SIZE="+strconv.Itoa(world),
			"MASTER_ADDR=127.0.0.1", "MASTER_PORT="+strconv.Itoa(port),
			"GLOO_SOCKET_IFNAME=lo", "OMP_NUM_THREADS=1", "DP2O_DEVICE=cpu", "DP2O_DIST_BACKEND=gloo")
		cmd.Env = append(cmd.Env, env...)
		outs[r] = &bytes.Buffer{}
		cmd.Stdout, cmd.Stderr = outs[r], outs[r]
		if err := cmd.Start(); err != nil {
			t.Fatalf("start rank %d: %v", r, err)
		}
		cmds[r] = cmd
	}
	res := make([]rankResult, world)
	for r, cmd := range cmds {
		res[r] = rankResult{err: cmd.Wait()}
	}
	for r := range res {
		res[r].output = outs[r].String()
	}
	if ctx.Err() != nil {
		for r, x := range res {
			t.Logf("rank %d: %v\n%s", r, x.err, x.output)
		}
		t.Fatalf("%s with %d ranks: still running after %v (killed)", scenario, world, deadline)
	}
	return res, dir
}

// requireAllOK fails the test naming each rank that did not exit cleanly.
func requireAllOK(t testing.TB, res []rankResult) {
	t.Helper()
	for r, x := range res {
		if x.err != nil {
			t.Errorf("rank %d: %v\n%s", r, x.err, x.output)
		}
	}
}

// checker collects a worker's failed checks.
type checker struct {
	rank  int
	fails int
}

func (c *checker) errorf(format string, args ...any) {
	c.fails++
	fmt.Fprintf(os.Stderr, "rank %d: %s\n", c.rank, fmt.Sprintf(format, args...))
}

func (c *checker) noErr(what string, err error) bool {
	if err != nil {
		c.errorf("%s: %v", what, err)
		return false
	}
	return true
}

// join joins the group torchrun's environment names, or says why not
// and returns nil.
func join() *Group {
	g, err := FromEnv()
	if err != nil {
		fmt.Fprintln(os.Stderr, "join:", err)
		return nil
	}
	return g
}

func runWorker(scenario string) (code int) {
	torch.SetNumThreads(1)
	defer func() {
		if p := recover(); p != nil {
			fmt.Fprintf(os.Stderr, "worker %s: panic: %v\n", scenario, p)
			code = 3
		}
	}()
	switch scenario {
	case "collectives":
		return workerCollectives()
	case "dead":
		return workerDead()
	case "dataparallel":
		return workerDataParallel()
	case "bench":
		return workerBench()
	case "reducerstep":
		return workerReducerStep()
	case "zero":
		return workerZero()
	}
	fmt.Fprintf(os.Stderr, "unknown worker scenario %q\n", scenario)
	return 2
}
