package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/dp2osr/dp2o/preference/label"
	"github.com/dp2osr/dp2o/torch/dist"
)

// The test binary is also a torchrun worker: started with workerEnv set to
// a JSON list of flags, it runs the label program with them as one rank and
// exits.
const workerEnv = "DP2O_LABEL_WORKER"

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
			os.Stderr.WriteString("label: " + err.Error() + "\n")
			os.Exit(1)
		}
		os.Exit(0)
	}
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
	single := candidates(t)
	msg, err := runApp("--candidates", single, "--metrics", "psnr,ssim", "--quiet")
	require.NoError(t, err, msg)
	want, err := label.Load(filepath.Join(single, label.LabelsFile))
	require.NoError(t, err)

	dir := candidates(t)
	const world = 2
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	js, err := json.Marshal([]string{"--candidates", dir, "--metrics", "psnr,ssim", "--quiet"})
	require.NoError(t, err)
	store := filepath.Join(t.TempDir(), "store")
	cmds := make([]*exec.Cmd, world)
	outs := make([]*bytes.Buffer, world)
	for r := range world {
		cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^$")
		cmd.Env = append(os.Environ(), workerEnv+"="+string(js),
			"RANK="+strconv.Itoa(r), "LOCAL_RANK="+strconv.Itoa(r), "WORLD_SIZE="+strconv.Itoa(world),
			"DP2O_DIST_STORE_FILE="+store, "DP2O_DIST_TIMEOUT=1m", "GLOO_SOCKET_IFNAME=lo", "OMP_NUM_THREADS=1")
		outs[r] = &bytes.Buffer{}
		cmd.Stdout, cmd.Stderr = outs[r], outs[r]
		require.NoError(t, cmd.Start())
		cmds[r] = cmd
	}
	for r, cmd := range cmds {
		require.NoError(t, cmd.Wait(), "rank %d:\n%s", r, outs[r])
		require.Contains(t, outs[r].String(), "shard "+strconv.Itoa(r)+"/"+strconv.Itoa(world))
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
	msg, err = runApp("--candidates", manual, "--metrics", "psnr", "--quiet")
	require.NoError(t, err, msg)
	require.Contains(t, msg, "0 scored now")
	_, err = runApp("--candidates", manual, "--metrics", "psnr", "--quiet", "--shard", "2", "--num_shards", "2")
	require.ErrorContains(t, err, "0 ≤ shard < num_shards")
}
