package dist

import (
	"errors"

	"github.com/dp2osr/dp2o/internal/testutil"
	"github.com/dp2osr/dp2o/torch"
	"os/exec"
	"path/filepath"
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
	t.Run("killed", func(t *testing.T) { deadPeer(t, "kill") })
	t.Run("stalled", func(t *testing.T) { deadPeer(t, "stall") })
}

func deadPeer(t *testing.T, mode string) {
	const timeout = 5 * time.Second
	res, _ := launch(t, "dead", 3, 6*timeout, "DP2O_DIST_TIMEOUT="+timeout.String(), "DP2O_DIST_TEST_PEER="+mode)
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

// TestDataParallelEquivalence: 2 processes with half the batch each reach
// the weights of 1 process with the whole batch (float32 tolerance), and
// both ranks hold identical weights.
func TestDataParallelEquivalence(t *testing.T) {
	requireGloo(t)
	testutil.NoLeak(t)
	want, err := tiny.train(Single())
	if err != nil {
		t.Fatal(err)
	}
	const world = 2
	res, dir := launch(t, "dataparallel", world, 60*time.Second, "DP2O_DIST_TIMEOUT=30s")
	requireAllOK(t, res)
	if t.Failed() {
		return
	}
	var first []float32
	for r := range world {
		got, err := readWeights(weightsFile(dir, r))
		if err != nil {
			t.Fatal(err)
		}
		if len(got) != len(want) {
			t.Fatalf("rank %d: %d weights, want %d", r, len(got), len(want))
		}
		worst := 0.0
		for i := range want {
			d := float64(got[i] - want[i])
			if d < 0 {
				d = -d
			}
			worst = max(worst, d)
			if d > 1e-5+1e-4*float64(abs32(want[i])) {
				t.Fatalf("rank %d weight %d: %g, one process %g (|diff| %g)", r, i, got[i], want[i], d)
			}
		}
		t.Logf("rank %d: max |diff| to one process with the whole batch: %.3g", r, worst)
		if r == 0 {
			first = got
			continue
		}
		for i := range got {
			if got[i] != first[i] {
				t.Fatalf("rank %d weight %d: %g, rank 0 has %g (ranks must agree exactly)", r, i, got[i], first[i])
			}
		}
	}
}

func abs32(x float32) float32 {
	if x < 0 {
		return -x
	}
	return x
}
