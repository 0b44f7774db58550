package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/dp2osr/dp2o/preference/sample"
	"github.com/dp2osr/dp2o/torch/dist"
)

// The test binary is also a torchrun worker: started with workerEnv set to
// a JSON list of flags, it runs the sample program with them as one rank
// and exits.
const workerEnv = "DP2O_SAMPLE_WORKER"

func TestMain(m *testing.M) {
	if a := os.Getenv(workerEnv); a != "" {
		var args []string
		if err := json.Unmarshal([]byte(a), &args); err != nil {
			os.Stderr.WriteString("worker flags: " + err.Error() + "\n")
			os.Exit(2)
		}
		msg, err := runApp(args...)
		os.Stdout.WriteString(msg)
		if err != nil {
			os.Stderr.WriteString("sample: " + err.Error() + "\n")
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// TestTorchrunRanks runs the sample program as 2 ranks with torchrun's
// environment (RANK, WORLD_SIZE, LOCAL_RANK; the c10d store in a file):
// each rank samples the shard of its rank, rank 0 merges once both are done,
// and the merged set is the one a single process makes, candidate for
// candidate (same files, same hashes). Shard flags under torchrun are
// refused.
func TestTorchrunRanks(t *testing.T) {
	if !dist.HasBackend(dist.Gloo) {
		t.Skipf("this libtorch build has no Gloo backend (backends: %v)", dist.Backends())
	}
	in := data(t)
	tmp := t.TempDir()
	common := []string{"--input_dir", in, "--num_candidates", "3", "--batch_size", "2",
		"--num_inference_steps", "2", "--process_size", "64", "--prompt", "house", "--device", "cpu", "--quiet",
		"--pretrained_model_name_or_path", filepath.Join(assets, "tiny-sd2"),
		"--controlnet_model_name_or_path", filepath.Join(assets, "tiny-sd2", "controlnet", "model.safetensors")}
	single := filepath.Join(tmp, "single")
	msg, err := runApp(append(common, "--output_dir", single)...)
	require.NoError(t, err, msg)

	const world = 2
	ranked := filepath.Join(tmp, "ranked")
	store := filepath.Join(tmp, "store")
	launch := func(extra ...string) ([]string, []error) {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
		defer cancel()
		js, err := json.Marshal(append(append(append([]string{}, common...), "--output_dir", ranked), extra...))
		require.NoError(t, err)
		cmds := make([]*exec.Cmd, world)
		outs := make([]*bytes.Buffer, world)
		for r := range world {
			cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^$")
			cmd.Env = append(os.Environ(), workerEnv+"="+string(js),
				"RANK="+strconv.Itoa(r), "LOCAL_RANK="+strconv.Itoa(r), "WORLD_SIZE="+strconv.Itoa(world),
				"DP2O_DIST_STORE_FILE="+store, "DP2O_DIST_TIMEOUT=2m", "GLOO_SOCKET_IFNAME=lo", "OMP_NUM_THREADS=1")
			outs[r] = &bytes.Buffer{}
			cmd.Stdout, cmd.Stderr = outs[r], outs[r]
			require.NoError(t, cmd.Start())
			cmds[r] = cmd
		}
		msgs, errs := make([]string, world), make([]error, world)
		for r, cmd := range cmds {
			errs[r] = cmd.Wait()
			msgs[r] = outs[r].String()
		}
		return msgs, errs
	}
	msgs, errs := launch()
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
	msgs, errs = launch("--shard", "0", "--num_shards", "2")
	for r := range world {
		require.Error(t, errs[r])
		require.Contains(t, msgs[r], "under torchrun the shard is the rank")
	}
}
