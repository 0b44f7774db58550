package main

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/dp2osr/dp2o/internal/testutil"
	"github.com/dp2osr/dp2o/preference"
	"github.com/dp2osr/dp2o/torch"
	"github.com/dp2osr/dp2o/torch/dist"
)

// distWorkerEnv makes the test binary a data-parallel worker: one rank of
// the train program (testutil.RunWorker).
const distWorkerEnv = "DP2O_TRAIN_DIST_WORKER"

func TestMain(m *testing.M) {
	testutil.RunWorker(distWorkerEnv, runApp)
	os.Exit(m.Run())
}

// TestTrainSD2DataParallel runs the train program as 2 Gloo processes on
// localhost (the environment torchrun gives: RANK, WORLD_SIZE, LOCAL_RANK,
// MASTER_ADDR, MASTER_PORT) with per-rank batch b and gradient accumulation,
// and as 1 process with batch 2b. Both consume the same pairs, timesteps,
// noise and VAE samples, so the final ControlNets agree to float32
// tolerance and the logged global losses agree. Each rank gets its own
// --output_dir here so the test can see who wrote what: rank 0's holds
// the checkpoints, the log, the curves and the model; rank 1's stays empty.
// One process with 2b then resumes rank 0's first checkpoint and ends with
// the same weights (the data position is counted in global pairs).
//
// The run is set up to compare gradients, not to amplify rounding: AdamW's
// first steps move every weight by about ±lr whatever the gradient's size
// (a last-bit difference in a near-zero gradient flips a whole step), so
// ε is 1 (an update ≈ lr·g) with a large lr; and β is 50, not the paper's
// 5000, whose factor on the MSE differences turns float32 rounding of the
// different batch shapes into 1e-4 relative loss differences by step 2.
//
// The ranks average their gradients with the overlapped reducer (the
// default --grad_sync overlap, DDP's way) here, and also with one
// all-reduce after the backward pass (--grad_sync after) in the FLUX test.
// Here the ranks also train with --gradient_checkpointing (the one process
// without): the ControlNet's gradients, accumulated in the recomputations'
// backward passes, start the reducer's buckets as they do without. The
// ranks also precompute the prompt embeddings, each its share, into one
// folder (--precompute_prompts), and train on them. And they shard the
// AdamW state (--shard_optimizer): each updates its share of the weights,
// and rank 0 gathers the whole state into each checkpoint, which the one
// process resumes.
func TestTrainSD2DataParallel(t *testing.T) {
	testDataParallel(t, "sd2", "tiny-sd2", "overlap", "--gradient_checkpointing", "--precompute_prompts", "--shard_optimizer",
		"--prompt_embeds_dir", filepath.Join(t.TempDir(), "prompt_embeds"))
}

// TestTrainFluxDataParallel is TestTrainSD2DataParallel for C-FLUX (three
// VAE samples per pair, flow-matching σ per pair). The last double block
// of a FLUX ControlNet computes a text stream nothing reads: those weights
// get no gradient in one process, so AdamW leaves them alone, and the
// ranks must leave them alone too (the overlapped reducer gives them no
// gradient rather than averaged zeros, and from the second step on its
// first bucket no longer waits for them). With the overlapped reducer the
// ranks also shard the gradients (--shard_gradients, ZeRO stage 2): each
// backward pass reduces each bucket to the rank that updates its weights,
// the logged gradient norm is taken over the ranks' shares, and the ranks
// resume a checkpoint as with --shard_optimizer alone.
func TestTrainFluxDataParallel(t *testing.T) {
	t.Run("overlap", func(t *testing.T) { testDataParallel(t, "flux", "tiny-flux", "overlap", "--shard_gradients") })
	t.Run("after", func(t *testing.T) { testDataParallel(t, "flux", "tiny-flux", "after") })
}

// testDataParallel: rankArgs are given to the ranks only.
func testDataParallel(t *testing.T, model, asset, gradSync string, rankArgs ...string) {
	const (
		world, perRank, accum, steps = 2, 1, 2, 2
		atol, rtol                   = 1e-6, 1e-5
	)
	if !dist.HasBackend(dist.Gloo) {
		t.Skipf("this libtorch build has no Gloo backend (backends: %v)", dist.Backends())
	}
	dir := t.TempDir()
	pairs := writePairs(t, dir, 2, 4, 1, 64)
	// Unequal HPO weights: a rank's share of the weighted mean loss then
	// depends on the other rank's weights (Batch.LossScale).
	pf, err := preference.LoadPairs(pairs)
	if err != nil {
		t.Fatal(err)
	}
	for i := range pf.Pairs {
		pf.Pairs[i].Weight = 0.25 + float64(i%3)
	}
	if err := pf.Save(pairs); err != nil {
		t.Fatal(err)
	}
	cn := assets + "/" + asset + "/controlnet/model.safetensors"
	common := []string{"--model", model, "--pretrained_model_name_or_path", assets + "/" + asset,
		"--controlnet_model_name_or_path", cn, "--pairs", pairs,
		"--learning_rate", "0.1", "--adam_epsilon", "1", "--beta_dpo", "50", "--gradient_accumulation_steps", strconv.Itoa(accum), "--seed", "5",
		"--max_train_steps", strconv.Itoa(steps), "--checkpointing_steps", "1", "--device", "cpu", "--no_progress"}

	// ranks runs the program as world ranks, rank r writing into
	// out/rank<r>, with extra arguments.
	ranks := func(out string, extra ...string) []string {
		port := testutil.FreePort(t)
		ws := make([]testutil.Worker, world)
		for r := range ws {
			ws[r] = testutil.Worker{
				Args: append(append(append(append([]string{}, common...), rankArgs...), extra...), "--grad_sync", gradSync,
					"--train_batch_size", strconv.Itoa(perRank), "--output_dir", filepath.Join(out, "rank"+strconv.Itoa(r))),
				Env: testutil.TorchrunEnv(r, world, "MASTER_ADDR=127.0.0.1", "MASTER_PORT="+strconv.Itoa(port),
					"GLOO_SOCKET_IFNAME=lo", "OMP_NUM_THREADS=1", "DP2O_DIST_BACKEND=gloo", "DP2O_DIST_TIMEOUT=2m",
					"DP2O_DIST_BUCKET_MB=0.001"),
			}
		}
		outs, errs := testutil.RunWorkers(t, 3*time.Minute, distWorkerEnv, ws...)
		failed := false
		for r := range world {
			if errs[r] != nil {
				t.Errorf("rank %d: %v\n%s", r, errs[r], outs[r])
				failed = true
			}
		}
		if failed {
			t.FailNow()
		}
		return outs
	}
	outs := ranks(dir)
	if line, ok := grepLine(outs[0], "gradient sync:"); ok != (gradSync == "overlap") {
		t.Errorf("--grad_sync %s: rank 0's report of the overlapped reducer: %q", gradSync, line)
	} else if ok {
		t.Log(line)
		// With 1 KB buckets, every bucket but the last started before the
		// last step's backward pass ended: none waited for a gradient that
		// never comes (the last double block's text stream), and the
		// buckets follow the order the gradients come in, not the order
		// the ControlNet creates its weights.
		var nb, started int
		if _, err := fmt.Sscanf(line[strings.Index(line, "gradient sync:"):], "gradient sync: %d buckets, %d started", &nb, &started); err != nil || nb < 2 || started != nb-1 {
			t.Errorf("the overlapped reducer started %d of %d buckets before the last backward pass ended, want all but the last (%q, %v)", started, nb, line, err)
		}
		// With sharded gradients the ranks held a few bucket buffers at
		// once, not the whole set.
		if slices.Contains(rankArgs, "--shard_gradients") {
			var held int
			i := strings.Index(line, "at most ")
			if i < 0 {
				t.Errorf("--shard_gradients: rank 0's report does not say how many bucket buffers it held: %q", line)
			} else if _, err := fmt.Sscanf(line[i:], "at most %d bucket buffers", &held); err != nil || held < 1 || held > 2*dist.MaxInFlight+1 {
				t.Errorf("--shard_gradients: rank 0 held %d bucket buffers at once, want 1 to %d (%q, %v)", held, 2*dist.MaxInFlight+1, line, err)
			}
		}
	}

	single := filepath.Join(dir, "single")
	if msg, err := runApp(append(common, "--train_batch_size", strconv.Itoa(world*perRank), "--output_dir", single)...); err != nil {
		t.Fatalf("one process: %v\n%s", err, msg)
	}

	rank0 := filepath.Join(dir, "rank0")
	for s := 1; s <= steps; s++ {
		mustExist(t, filepath.Join(rank0, "checkpoint-"+strconv.Itoa(s), preference.CheckpointModel))
	}
	mustExist(t, filepath.Join(rank0, "train_log.csv"), filepath.Join(rank0, "train_curves.png"))
	if ents, err := os.ReadDir(filepath.Join(dir, "rank1")); err == nil && len(ents) > 0 {
		t.Errorf("rank 1 wrote %d entries into its output folder (only rank 0 writes), first %s", len(ents), ents[0].Name())
	}

	got := testutil.Tensors(t, filepath.Join(rank0, preference.CheckpointModel))
	want := testutil.Tensors(t, filepath.Join(single, preference.CheckpointModel))
	init := testutil.Tensors(t, cn)
	if len(got) != len(want) || len(want) == 0 {
		t.Fatalf("the 2-process ControlNet has %d tensors, the 1-process one %d", len(got), len(want))
	}
	maxDiff := closeModels(t, "the 2-process ControlNet", got, want, atol, rtol)
	moved := false
	for name, w := range want {
		if i, ok := init[name]; ok {
			if d, _, err := testutil.Diff(w, i, 0, 0); err == nil && d > 0 {
				moved = true
				break
			}
		}
	}
	t.Logf("%d ControlNet tensors, max |diff| %.3g (atol %g, rtol %g)", len(want), maxDiff, atol, rtol)
	if !moved {
		t.Error("training did not change the ControlNet: the comparison shows nothing")
	}
	// Resuming across world sizes: rank 0's first checkpoint (2 ranks ×
	// b) continued by 1 process × 2b ends where 1 process × 2b does.
	resumed := filepath.Join(dir, "resumed")
	if err := os.CopyFS(filepath.Join(resumed, "checkpoint-1"), os.DirFS(filepath.Join(rank0, "checkpoint-1"))); err != nil {
		t.Fatal(err)
	}
	if msg, err := runApp(append(common, "--train_batch_size", strconv.Itoa(world*perRank), "--output_dir", resumed,
		"--resume_from_checkpoint", "latest")...); err != nil || !strings.Contains(msg, "resumed from") {
		t.Fatalf("one process resuming the 2-process checkpoint: %v\n%s", err, msg)
	}
	res := testutil.Tensors(t, filepath.Join(resumed, preference.CheckpointModel))
	t.Logf("resumed across world sizes: max |diff| %.3g", closeModels(t, "the resumed ControlNet", res, want, atol, rtol))
	if slices.Contains(rankArgs, "--shard_optimizer") || slices.Contains(rankArgs, "--shard_gradients") {
		// The ranks resume rank 0's first checkpoint, each reading its
		// part of the optimizer state, and end where they did without
		// the interruption.
		again := filepath.Join(dir, "again")
		ranks(again, "--resume_from_checkpoint", filepath.Join(rank0, "checkpoint-1"))
		res := testutil.Tensors(t, filepath.Join(again, "rank0", preference.CheckpointModel))
		t.Logf("resumed by %d ranks with a sharded optimizer: max |diff| to the uninterrupted ranks %.3g",
			world, closeModels(t, "the ControlNet the ranks resumed", res, got, atol, rtol))
	}
	// The logged loss is the global batch's (the ranks' losses averaged).
	rd, rs := logRows(t, filepath.Join(rank0, "train_log.csv")), logRows(t, filepath.Join(single, "train_log.csv"))
	if len(rd) != steps || len(rs) != steps {
		t.Fatalf("log rows: %d with 2 processes, %d with 1, want %d", len(rd), len(rs), steps)
	}
	for i := range rd {
		for _, col := range []int{1, 6} { // loss, grad_norm
			a, _ := strconv.ParseFloat(rd[i][col], 64)
			b, _ := strconv.ParseFloat(rs[i][col], 64)
			if d := a - b; d > 1e-5*(1+abs(b)) || -d > 1e-5*(1+abs(b)) {
				t.Errorf("step %s %s: %v with 2 processes, %v with 1", rs[i][0], logHeader[col], a, b)
			}
		}
	}
}

// closeModels fails the test, naming the first tensor, unless model (what)
// holds every tensor of want within atol + rtol·|want|, and returns the
// largest |difference|.
func closeModels(t *testing.T, what string, model, want map[string]*torch.Tensor, atol, rtol float64) float64 {
	t.Helper()
	worstDiff := 0.0
	for name, w := range want {
		g, ok := model[name]
		if !ok {
			t.Fatalf("%s lacks %s", what, name)
		}
		d, worst, err := testutil.Diff(g, w, atol, rtol)
		if err != nil || worst > 0 {
			testutil.AssertClose(t, what+": "+name, g, w, atol, rtol) // fails, naming the tensor
		}
		worstDiff = max(worstDiff, d)
	}
	return worstDiff
}

func abs(x float64) float64 {
	if x < 0 {
		return -x
	}
	return x
}

// grepLine returns the first line of out containing s.
func grepLine(out, s string) (string, bool) {
	for _, l := range strings.Split(out, "\n") {
		if strings.Contains(l, s) {
			return l, true
		}
	}
	return "", false
}

// TestTrainCheckpointFailureStopsRanks: when rank 0 cannot write a
// checkpoint, every rank stops at once with an error saying so (the
// others learn it in the collective that follows each checkpoint), rather
// than from a lost connection, which Gloo reports at once but NCCL may
// only at the collective timeout (10 minutes here; the workers get 90 s).
// Rank 0's output folder is a path so long that its log fits under
// Linux's PATH_MAX and its checkpoint folder does not.
func TestTrainCheckpointFailureStopsRanks(t *testing.T) {
	if !dist.HasBackend(dist.Gloo) {
		t.Skipf("this libtorch build has no Gloo backend (backends: %v)", dist.Backends())
	}
	const world, pathMax = 2, 4096
	dir := t.TempDir()
	pairs := writePairs(t, dir, 2, 4, 1, 64)
	// The longest folder whose log's path (without its NUL) fits.
	want := pathMax - 2 - len("/train_log.csv")
	long := filepath.Join(dir, "rank0")
	for len(long) < want {
		if k := min(200, want-len(long)-1); k > 0 {
			long = filepath.Join(long, strings.Repeat("d", k))
		} else {
			long += "d" // one short: the last name grows by one
		}
	}
	port := testutil.FreePort(t)
	ws := make([]testutil.Worker, world)
	for r := range ws {
		out := long
		if r > 0 {
			out = filepath.Join(dir, "rank"+strconv.Itoa(r))
		}
		ws[r] = testutil.Worker{
			Args: []string{"--model", "sd2", "--pretrained_model_name_or_path", assets + "/tiny-sd2",
				"--controlnet_model_name_or_path", assets + "/tiny-sd2/controlnet/model.safetensors", "--pairs", pairs,
				"--train_batch_size", "1", "--max_train_steps", "2", "--checkpointing_steps", "1", "--device", "cpu",
				"--no_progress", "--output_dir", out},
			Env: testutil.TorchrunEnv(r, world, "MASTER_ADDR=127.0.0.1", "MASTER_PORT="+strconv.Itoa(port),
				"GLOO_SOCKET_IFNAME=lo", "OMP_NUM_THREADS=1", "DP2O_DIST_BACKEND=gloo", "DP2O_DIST_TIMEOUT=10m"),
		}
	}
	outs, errs := testutil.RunWorkers(t, 90*time.Second, distWorkerEnv, ws...)
	for r, want := range []string{"checkpoint", "rank 0 could not write it"} {
		if errs[r] == nil || !strings.Contains(outs[r], want) {
			t.Errorf("rank %d: %v, want an error saying %q\n%s", r, errs[r], want, outs[r][max(0, len(outs[r])-600):])
		}
	}
	if _, err := os.Stat(filepath.Join(long, "train_log.csv")); err != nil {
		t.Errorf("rank 0's log: %v (the test's path should leave it room)", err)
	}
}
