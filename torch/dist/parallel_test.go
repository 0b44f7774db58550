package dist

import (
	"errors"
	"math"

	"github.com/dp2osr/dp2o/internal/testutil"
	"github.com/dp2osr/dp2o/torch"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

func requireGloo(t testing.TB) {
	t.Helper()
	if !HasBackend(Gloo) {
		t.Skipf("this libtorch build has no Gloo backend (backends: %v)", Backends())
	}
}

// TestCollectives: 2 ranks meeting through a file store and 3 through the
// TCP store all-reduce, broadcast, gather and average known tensors.
func TestCollectives(t *testing.T) {
	requireGloo(t)
	t.Run("2 ranks, file store", func(t *testing.T) {
		store := filepath.Join(t.TempDir(), "store")
		res, _ := launch(t, "collectives", 2, 60*time.Second, "DP2O_DIST_STORE_FILE="+store, "DP2O_DIST_TIMEOUT=30s")
		requireAllOK(t, res)
	})
	t.Run("3 ranks, TCP store", func(t *testing.T) {
		res, _ := launch(t, "collectives", 3, 60*time.Second, "DP2O_DIST_TIMEOUT=30s")
		requireAllOK(t, res)
	})
	t.Run("3 ranks, the launcher's TCP store", func(t *testing.T) {
		// As torchrun with a static rendezvous: the launcher serves the store
		// on MASTER_PORT and every rank, rank 0 included, is a client.
		port := testutil.FreePort(t)
		srv, err := ServeStore("127.0.0.1", port, 30*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		defer srv.Close()
		res, _ := launch(t, "collectives", 3, 60*time.Second, "DP2O_DIST_TIMEOUT=30s", "MASTER_PORT="+strconv.Itoa(port),
			"TORCHELASTIC_USE_AGENT_STORE=True", "TORCHELASTIC_RESTART_COUNT=0")
		requireAllOK(t, res)
	})
}

// TestCollectivesNCCL runs the same checks with NCCL and one process per
// GPU (world size 1 on a one-GPU machine) when the tests run on CUDA
// (DP2O_DEVICE=cuda) and the libtorch has NCCL.
func TestCollectivesNCCL(t *testing.T) {
	if !testutil.Device(t).IsCUDA() {
		t.Skip("NCCL runs with DP2O_DEVICE=cuda")
	}
	if !HasBackend(NCCL) {
		t.Skipf("this libtorch build has no NCCL backend (backends: %v)", Backends())
	}
	world := min(torch.CUDADeviceCount(), 2)
	res, _ := launch(t, "collectives", world, 120*time.Second, "DP2O_DIST_BACKEND=nccl", "DP2O_DIST_TIMEOUT=60s",
		"DP2O_DEVICE=cuda")
	requireAllOK(t, res)
}

// TestDeadPeer: a rank killed before a collective, or one that never joins
// it, makes the others return an error within the timeout instead of
// hanging.
func TestDeadPeer(t *testing.T) {
	requireGloo(t)
	t.Run("killed", func(t *testing.T) { deadPeer(t, "kill", "all_reduce") })
	t.Run("stalled", func(t *testing.T) { deadPeer(t, "stall", "all_reduce") })
	// The survivors in a reducer's training step: the buckets the backward
	// pass started, then Finish.
	t.Run("killed during a reducer step", func(t *testing.T) { deadPeer(t, "kill", "reducer") })
}

func deadPeer(t *testing.T, mode, op string) {
	const timeout = 4 * time.Second
	res, _ := launch(t, "dead", 3, 6*timeout, "DP2O_DIST_TIMEOUT="+timeout.String(), "DP2O_DIST_TEST_PEER="+mode, "DP2O_DIST_TEST_OP="+op)
	last := len(res) - 1
	var ee *exec.ExitError
	if mode == "kill" && (!errors.As(res[last].err, &ee) || ee.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL) {
		t.Errorf("rank %d should have been killed, ended with %v\n%s", last, res[last].err, res[last].output)
	}
	requireAllOK(t, res[:last])
	for r, x := range res[:last] {
		if !strings.Contains(x.output, "collective returned after") {
			t.Errorf("rank %d did not report its collective:\n%s", r, x.output)
		}
		t.Logf("rank %d: %s", r, strings.TrimSpace(x.output))
	}
}

// TestDataParallelEquivalence: 2 processes with half of each global batch
// reach the weights of 1 process with the whole batch (float32 tolerance),
// with AdamW and with SGD + gradient accumulation, and both ranks hold
// identical weights.
//
// With DP2O_DEVICE=cuda the runs are on the GPU, both ranks on one through
// Gloo's CUDA all-reduce.
func TestDataParallelEquivalence(t *testing.T) {
	dir, ok := checkRuns(t, tinyRuns, 2)
	if !ok {
		return
	}
	// A sharded optimizer updates as the unsharded one, bit for bit: each
	// parameter's owner applies the same kernel to the same averaged
	// gradient and the others copy the result.
	for i, run := range tinyRuns {
		if !run.zero || run.shardGrads {
			continue
		}
		twin := run
		twin.zero = false
		j := slices.Index(tinyRuns, twin)
		if j < 0 {
			t.Fatalf("run %d (sharded) has no unsharded twin in tinyRuns", i)
		}
		a, err := readWeights(weightsFile(dir, i, 0))
		if err != nil {
			t.Fatal(err)
		}
		b, err := readWeights(weightsFile(dir, j, 0))
		if err != nil {
			t.Fatal(err)
		}
		for k := range a {
			if a[k] != b[k] {
				t.Fatalf("run %d (sharded) weight %d: %g, unsharded run %d has %g (must agree exactly)", i, k, a[k], j, b[k])
			}
		}
	}
}

// checkRuns trains runs in one process, then in world worker processes
// (the "dataparallel" scenario, with env), and wants each rank's final
// weights of each run within float32 tolerance of the one process's, and
// the ranks equal. It returns the folder of the workers' weights and
// whether the workers ran. With DP2O_DEVICE=cuda the runs are on the GPU.
func checkRuns(t *testing.T, runs []tinyRun, world int, env ...string) (string, bool) {
	t.Helper()
	requireGloo(t)
	testutil.NoLeak(t)
	if testutil.Device(t).IsCUDA() {
		t.Setenv(cudaEnv, "1")
		env = append(env, cudaEnv+"=1")
	}
	var want [][]float32
	for _, run := range runs {
		w, err := run.train(Single())
		if err != nil {
			t.Fatal(err)
		}
		want = append(want, w)
	}
	res, dir := launch(t, "dataparallel", world, 60*time.Second, append(env, "DP2O_DIST_TIMEOUT=30s")...)
	requireAllOK(t, res)
	if t.Failed() {
		return dir, false
	}
	for i, run := range runs {
		var first []float32
		for r := range world {
			got, err := readWeights(weightsFile(dir, i, r))
			if err != nil {
				t.Fatal(err)
			}
			if len(got) != len(want[i]) {
				t.Fatalf("run %d rank %d: %d weights, want %d", i, r, len(got), len(want[i]))
			}
			worst := 0.0
			for j, v := range want[i] {
				d := math.Abs(float64(got[j] - v))
				worst = max(worst, d)
				if d > 1e-5+1e-4*math.Abs(float64(v)) {
					t.Fatalf("run %d rank %d weight %d: %g, one process %g (|diff| %g)", i, r, j, got[j], v, d)
				}
			}
			t.Logf("run %d (sgd %v, accumulation %d, overlapped %v, checkpointed %v, spare %d, sharded %v, gradients sharded %v, clip %v) rank %d: max |diff| to one process with the whole batch: %.3g",
				i, run.sgd, run.accum, run.overlap, run.checkpoint, run.spare, run.zero, run.shardGrads, run.clip, r, worst)
			if r == 0 {
				first = got
				continue
			}
			for j := range got {
				if got[j] != first[j] {
					t.Fatalf("run %d rank %d weight %d: %g, rank 0 has %g (ranks must agree exactly)", i, r, j, got[j], first[j])
				}
			}
		}
	}
	return dir, true
}

// TestShardedGradientsThreeRanks: with sharded gradients over 3 ranks (an
// odd world: owners of every rank, two ranks following rank 0's order in
// the first step) the runs of threeRankRuns reach one process's weights.
func TestShardedGradientsThreeRanks(t *testing.T) {
	checkRuns(t, threeRankRuns, 3, runsEnv+"=three")
}
