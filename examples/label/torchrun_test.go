package main

import (
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/dp2osr/dp2o/internal/testutil"
	"github.com/dp2osr/dp2o/preference/label"
	"github.com/dp2osr/dp2o/torch/dist"
)

// workerEnv makes the test binary a label worker (testutil.RunWorker).
const workerEnv = "DP2O_LABEL_WORKER"

func TestMain(m *testing.M) {
	testutil.RunWorker(workerEnv, runApp)
	os.Exit(m.Run())
}

// TestTorchrunRanks runs the label program as 2 ranks with torchrun's
// environment (the c10d store in a file): each rank scores the inputs of its
// shard into its own log, rank 0 writes the labels once both are done, and
// they are the labels one process writes. --shard i --num_shards n without
// torchrun leaves the labels to a later unsharded run.
func TestTorchrunRanks(t *testing.T) {
	if !dist.HasBackend(dist.Gloo) {
		t.Skipf("this libtorch build has no Gloo backend (backends: %v)", dist.Backends())
	}
	threads := "OMP_NUM_THREADS=1"
	args := func(dir string) []string { return []string{"--candidates", dir, "--metrics", "psnr,ssim", "--quiet"} }
	// The single process runs as a worker too, with the ranks' thread
	// settings: the same kernels compute the scores compared below.
	single := candidates(t)
	msgs, errs := testutil.RunWorkers(t, 2*time.Minute, workerEnv, testutil.Worker{Args: args(single), Env: []string{threads}})
	require.NoError(t, errs[0], msgs[0])
	want, err := label.Load(filepath.Join(single, label.LabelsFile))
	require.NoError(t, err)

	dir := candidates(t)
	const world = 2
	store := filepath.Join(t.TempDir(), "store")
	ws := make([]testutil.Worker, world)
	for r := range ws {
		ws[r] = testutil.Worker{Args: args(dir),
			Env: testutil.TorchrunEnv(r, world, "DP2O_DIST_STORE_FILE="+store, "DP2O_DIST_TIMEOUT=1m", "GLOO_SOCKET_IFNAME=lo", threads)}
	}
	msgs, errs = testutil.RunWorkers(t, 2*time.Minute, workerEnv, ws...)
	for r := range world {
		require.NoError(t, errs[r], "rank %d:\n%s", r, msgs[r])
		require.Contains(t, msgs[r], "shard "+strconv.Itoa(r)+"/"+strconv.Itoa(world))
	}
	for r := range world {
		_, err := os.Stat(filepath.Join(dir, label.ShardScoresFile(r, world)))
		require.NoError(t, err, "rank %d's score log", r)
	}
	got, err := label.Load(filepath.Join(dir, label.LabelsFile))
	require.NoError(t, err, "rank 0 writes the labels")
	require.Equal(t, len(want.Groups), len(got.Groups))
	require.Equal(t, want.Metrics, got.Metrics)
	for i := range want.Groups {
		require.Equal(t, want.Groups[i].ID, got.Groups[i].ID)
		require.Equal(t, want.Groups[i].Raw, got.Groups[i].Raw, "input %s", want.Groups[i].ID)
		require.Equal(t, want.Groups[i].Reward, got.Groups[i].Reward, "input %s", want.Groups[i].ID)
	}

	// Without torchrun: a shard scores and leaves the labels to a later
	// unsharded run, which scores nothing.
	manual := candidates(t)
	for i := range world {
		msg, err := runApp("--candidates", manual, "--metrics", "psnr", "--quiet", "--shard", strconv.Itoa(i), "--num_shards", strconv.Itoa(world))
		require.NoError(t, err, msg)
		require.Contains(t, msg, "when every shard is done")
	}
	_, err = os.Stat(filepath.Join(manual, label.LabelsFile))
	require.ErrorIs(t, err, os.ErrNotExist)
	msg, err := runApp("--candidates", manual, "--metrics", "psnr", "--quiet")
	require.NoError(t, err, msg)
	require.Contains(t, msg, "0 scored now")
	_, err = runApp("--candidates", manual, "--metrics", "psnr", "--quiet", "--shard", "2", "--num_shards", "2")
	require.ErrorContains(t, err, "0 ≤ shard < num_shards")
}
