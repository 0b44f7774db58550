package main

import (
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/dp2osr/dp2o/internal/testutil"
	"github.com/dp2osr/dp2o/preference/sample"
	"github.com/dp2osr/dp2o/torch/dist"
)

// workerEnv makes the test binary a sample worker (testutil.RunWorker).
const workerEnv = "DP2O_SAMPLE_WORKER"

func TestMain(m *testing.M) {
	testutil.RunWorker(workerEnv, runApp)
	os.Exit(m.Run())
}

// TestTorchrunRanks runs the sample program as 2 ranks with torchrun's
// environment (RANK, WORLD_SIZE, LOCAL_RANK; the c10d store in a file):
// each rank samples the shard of its rank, rank 0 merges once both are done,
// and the merged set is the one a single process makes, candidate for
// candidate (same files, same hashes: the single process runs as a worker
// too, with the ranks' thread settings, so the same kernels run). Shard
// flags under torchrun are refused.
func TestTorchrunRanks(t *testing.T) {
	if !dist.HasBackend(dist.Gloo) {
		t.Skipf("this libtorch build has no Gloo backend (backends: %v)", dist.Backends())
	}
	in := data(t)
	tmp := t.TempDir()
	with := func(extra ...string) []string { return tinySD2Args(in, extra...) }
	threads := "OMP_NUM_THREADS=1"

	single := filepath.Join(tmp, "single")
	msgs, errs := testutil.RunWorkers(t, 3*time.Minute, workerEnv, testutil.Worker{Args: with("--output_dir", single), Env: []string{threads}})
	require.NoError(t, errs[0], msgs[0])

	const world = 2
	ranked := filepath.Join(tmp, "ranked")
	store := filepath.Join(tmp, "store")
	ranks := func(extra ...string) ([]string, []error) {
		ws := make([]testutil.Worker, world)
		for r := range ws {
			ws[r] = testutil.Worker{Args: with(append([]string{"--output_dir", ranked}, extra...)...),
				Env: testutil.TorchrunEnv(r, world, "DP2O_DIST_STORE_FILE="+store, "DP2O_DIST_TIMEOUT=2m", "GLOO_SOCKET_IFNAME=lo", threads)}
		}
		return testutil.RunWorkers(t, 3*time.Minute, workerEnv, ws...)
	}
	msgs, errs = ranks()
	for r := range world {
		require.NoError(t, errs[r], "rank %d:\n%s", r, msgs[r])
		require.Contains(t, msgs[r], "shard "+strconv.Itoa(r)+"/"+strconv.Itoa(world), "rank %d sampled another shard", r)
	}
	require.Contains(t, msgs[0], "merge:", "rank 0 merges")
	require.NotContains(t, msgs[1], "merge:", "only rank 0 merges")

	read := func(dir string) []string {
		recs, err := sample.ReadManifest(dir)
		require.NoError(t, err)
		var keys []string
		for _, r := range recs {
			keys = append(keys, r.Input+" "+strconv.FormatUint(r.Seed, 10)+" "+r.File+" "+r.SHA256)
		}
		sort.Strings(keys)
		return keys
	}
	want := read(single)
	require.NotEmpty(t, want)
	require.Equal(t, want, read(ranked), "the ranks' merged set is the single process's")

	os.Remove(store)
	msgs, errs = ranks("--shard", "0", "--num_shards", "2")
	for r := range world {
		require.Error(t, errs[r])
		require.Contains(t, msgs[r], "under torchrun the shard is the rank")
	}
}
