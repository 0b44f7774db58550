package dist

import (
	"fmt"
	"math"
	"os"
	"regexp"
	"strconv"
	"testing"
	"time"

	"github.com/dp2osr/dp2o/internal/testutil"
	"github.com/dp2osr/dp2o/torch"
	"github.com/dp2osr/dp2o/torch/optim"
)

// BenchmarkAverageGradients times AverageGradients of a float32 gradient
// set (DP2O_DIST_BENCH_MB, default 64, as 16 parameters) between 2 local
// Gloo processes (DP2O_DIST_BENCH_WORLD). ns/op is rank 0's time per call,
// measured inside the worker after one warm-up call; GB/s is the bus
// bandwidth in NCCL's sense, 2(N−1)/N × bytes / time.
//
//	go test ./torch/dist -run '^$' -bench AverageGradients -benchtime 5x
func BenchmarkAverageGradients(b *testing.B) {
	requireGloo(b)
	mb, world := envInt("DP2O_DIST_BENCH_MB", 64), envInt("DP2O_DIST_BENCH_WORLD", 2)
	res, _ := launch(b, "bench", world, 5*time.Minute, "DP2O_DIST_TIMEOUT=2m",
		fmt.Sprintf("DP2O_DIST_BENCH_ITERS=%d", b.N), fmt.Sprintf("DP2O_DIST_BENCH_MB=%d", mb))
	requireAllOK(b, res)
	m := regexp.MustCompile(`per call: ([0-9.e+-]+) s`).FindStringSubmatch(res[0].output)
	if m == nil {
		b.Fatalf("no timing from rank 0:\n%s", res[0].output)
	}
	sec, _ := strconv.ParseFloat(m[1], 64)
	bytes := float64(mb << 20)
	b.ReportMetric(sec*1e9, "ns/op")
	b.ReportMetric(2*float64(world-1)/float64(world)*bytes/sec/1e9, "busGB/s")
	b.ReportMetric(float64(mb), "MiB")
}

func envInt(name string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil && v > 0 {
		return v
	}
	return def
}

// workerBench averages a gradient set DP2O_DIST_BENCH_ITERS times.
func workerBench() int {
	g := join()
	if g == nil {
		return 1
	}
	defer g.Close()
	const parts = 16
	each := int64(envInt("DP2O_DIST_BENCH_MB", 64)) << 20 / 4 / parts
	s := torch.NewScope()
	defer s.Close()
	var params []*torch.Tensor
	for range parts {
		p := torch.Zeros([]int64{each}, torch.Float32, torch.CPU).SetRequiresGrad(true)
		p.SetGrad(torch.Ones([]int64{each}, torch.Float32, torch.CPU))
		params = append(params, p)
	}
	if err := g.AverageGradients(params); err != nil { // warm-up: connections, buffers
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	iters := envInt("DP2O_DIST_BENCH_ITERS", 1)
	start := time.Now()
	for range iters {
		if err := g.AverageGradients(params); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
	}
	fmt.Printf("per call: %g s\n", time.Since(start).Seconds()/float64(iters))
	return 0
}

// BenchmarkReducerStep times a data-parallel training step of a
// perceptron of DP2O_DIST_BENCH_LAYERS (8) square layers of width
// DP2O_DIST_BENCH_WIDTH (2048): 128 MiB of float32 weights, batch 32, a
// Reducer with the default 25 MB buckets, plain SGD, between 2 local Gloo
// processes (DP2O_DIST_BENCH_WORLD), one thread each. ns/op is rank 0's
// time per step after a warm-up step; peak-MiB is the largest growth of a
// rank's peak resident set (VmHWM) above its resident set once the model
// and the data are built, the reducer's buffers included.
// scripts/bench_ddp_step.py runs the same step with PyTorch's
// DistributedDataParallel on the same libtorch.
//
//	go test ./torch/dist -run '^$' -bench ReducerStep -benchtime 5x
func BenchmarkReducerStep(b *testing.B) { benchStep(b) }

// BenchmarkShardedStep is BenchmarkReducerStep's step with AdamW (lr
// 1e-3), whole on each rank, sharded over the ranks (NewShardedOptimizer:
// each rank keeps the moments of half the weights, updates them and
// broadcasts them; ZeRO stage 1), and with the gradients sharded too
// (Reducer.ShardGradients: each bucket reduced to its owner, which alone
// keeps it; ZeRO stage 2). peak-MiB then holds the moments, which the
// first step allocates. DP2O_DIST_BENCH_ACCUM backward passes per step
// (gradient accumulation; default 1) each take the whole batch.
// scripts/bench_ddp_step.py --optim adamw runs it with DDP and AdamW, then
// with PyTorch's ZeroRedundancyOptimizer (--accum: DDP's no_sync for all
// passes but the last). With DP2O_DIST_BENCH_CUDA=1 the ranks train on
// GPU 0 (Gloo moves CUDA tensors), and peak-MiB is the largest growth of a
// rank's peak CUDA allocation above its allocation once the model and the
// data are built (scripts/gpu-check.sh runs it so).
//
//	go test ./torch/dist -run '^$' -bench ShardedStep -benchtime 5x
func BenchmarkShardedStep(b *testing.B) {
	b.Run("adamw", func(b *testing.B) { benchStep(b, "DP2O_DIST_BENCH_OPTIM=adamw") })
	b.Run("adamw-sharded", func(b *testing.B) { benchStep(b, "DP2O_DIST_BENCH_OPTIM=adamw", "DP2O_DIST_BENCH_ZERO=1") })
	b.Run("adamw-sharded-gradients", func(b *testing.B) {
		benchStep(b, "DP2O_DIST_BENCH_OPTIM=adamw", "DP2O_DIST_BENCH_ZERO=2")
	})
}

func benchStep(b *testing.B, env ...string) {
	requireGloo(b)
	world := envInt("DP2O_DIST_BENCH_WORLD", 2)
	// A fixed mmap threshold: glibc's sliding one would keep freed
	// gradient-sized blocks resident, and VmHWM would not be the peak of
	// live memory (the Python script does the same). It also makes every
	// large block glibc hands out fresh, page faults and all, which the
	// CPU tensor cache spares Go and not PyTorch:
	// DP2O_DIST_BENCH_MMAP_THRESHOLD (bytes) sets another, 0 none (glibc's
	// default, what a user runs; peak-MiB then means little), on both
	// sides.
	threshold := 131072
	if v, ok := os.LookupEnv("DP2O_DIST_BENCH_MMAP_THRESHOLD"); ok {
		n, err := strconv.Atoi(v)
		if err != nil || n < 0 {
			b.Fatalf("DP2O_DIST_BENCH_MMAP_THRESHOLD=%q: want bytes, or 0 for glibc's default", v)
		}
		threshold = n
	}
	vars := []string{"DP2O_DIST_TIMEOUT=5m", fmt.Sprintf("DP2O_DIST_BENCH_ITERS=%d", b.N)}
	if threshold > 0 {
		vars = append(vars, fmt.Sprintf("MALLOC_MMAP_THRESHOLD_=%d", threshold))
	} else {
		// The ranks inherit this process's environment: none of them
		// may get a threshold from the shell either.
		os.Unsetenv("MALLOC_MMAP_THRESHOLD_")
	}
	res, _ := launch(b, "reducerstep", world, 10*time.Minute, append(vars, env...)...)
	requireAllOK(b, res)
	re := regexp.MustCompile(`per step: ([0-9.e+-]+) s, peak growth: ([0-9]+) bytes`)
	var sec float64
	var peak int64
	for r, x := range res {
		m := re.FindStringSubmatch(x.output)
		if m == nil {
			b.Fatalf("no figures from rank %d:\n%s", r, x.output)
		}
		if r == 0 {
			sec, _ = strconv.ParseFloat(m[1], 64)
		}
		p, _ := strconv.ParseInt(m[2], 10, 64)
		peak = max(peak, p)
	}
	b.ReportMetric(sec*1e9, "ns/op")
	b.ReportMetric(float64(peak)/(1<<20), "peak-MiB")
}

// workerReducerStep is one rank of BenchmarkReducerStep.
func workerReducerStep() int {
	g := join()
	if g == nil {
		return 1
	}
	defer g.Close()
	if err := reducerStep(g); err != nil {
		fmt.Fprintf(os.Stderr, "rank %d: %v\n", g.Rank(), err)
		return 1
	}
	return 0
}

func reducerStep(g *Group) (err error) {
	defer torch.Recover(&err)
	width, layers := int64(envInt("DP2O_DIST_BENCH_WIDTH", 2048)), envInt("DP2O_DIST_BENCH_LAYERS", 8)
	const batch = 32
	s := torch.NewScope()
	defer s.Close()
	dev := torch.CPU
	cuda := os.Getenv("DP2O_DIST_BENCH_CUDA") == "1"
	if cuda {
		dev = torch.CUDA(0)
	}
	gen := torch.MustGenerator(torch.CPU, 1)
	var params []*torch.Tensor
	var named []optim.Param
	for l := range layers {
		w := torch.Randn([]int64{width, width}, gen, torch.Float32, torch.CPU).MulScalar(1 / math.Sqrt(float64(width))).ToDevice(dev).SetRequiresGrad(true)
		bias := torch.Zeros([]int64{width}, torch.Float32, dev).SetRequiresGrad(true)
		params = append(params, w, bias)
		named = append(named, optim.Param{Name: fmt.Sprint("w", l), Tensor: w}, optim.Param{Name: fmt.Sprint("b", l), Tensor: bias})
	}
	x := torch.Randn([]int64{batch, width}, gen, torch.Float32, torch.CPU).ToDevice(dev)
	y := torch.Randn([]int64{batch, width}, gen, torch.Float32, torch.CPU).ToDevice(dev)
	build := func(ps []optim.Param) (optim.Optimizer, error) {
		if os.Getenv("DP2O_DIST_BENCH_OPTIM") == "adamw" {
			cfg := optim.DefaultAdamW()
			return optim.NewAdamW(ps, cfg)
		}
		return optim.NewSGD(ps, optim.SGDConfig{LR: 1e-3})
	}
	var opt optim.Optimizer
	zero := os.Getenv("DP2O_DIST_BENCH_ZERO")
	if zero == "1" || zero == "2" {
		opt, err = g.NewShardedOptimizer(named, build)
	} else {
		opt, err = build(named)
	}
	if err != nil {
		return err
	}
	defer opt.Close()
	before, err := testutil.ReadProcStatus()
	if err != nil {
		return err
	}
	var cudaBefore int64
	if cuda {
		if cudaBefore, _, _, err = torch.CUDAMemory(0); err != nil {
			return err
		}
		if err := torch.CUDAResetPeak(0); err != nil {
			return err
		}
	}
	red, err := g.NewReducer(params)
	if err != nil {
		return err
	}
	defer red.Close()
	if zero == "2" {
		if err := red.ShardGradients(opt.(*ShardedOptimizer).Owners()); err != nil {
			return err
		}
	}
	accum := envInt("DP2O_DIST_BENCH_ACCUM", 1)
	step := func() error {
		ss := torch.NewScope()
		defer ss.Close()
		for m := range accum {
			h := x
			for l := range layers {
				h = torch.Linear(h, params[2*l], params[2*l+1]).Tanh()
			}
			loss := torch.MSELoss(h, y).DivScalar(float64(accum))
			if err := red.Prepare(m == accum-1); err != nil {
				return err
			}
			loss.Backward(nil)
		}
		if err := red.Finish(); err != nil {
			return err
		}
		if err := opt.Step(); err != nil {
			return err
		}
		opt.ZeroGrad()
		return nil
	}
	if err := step(); err != nil { // warm-up: connections, buffers
		return err
	}
	iters := envInt("DP2O_DIST_BENCH_ITERS", 1)
	start := time.Now()
	for range iters {
		if err := step(); err != nil {
			return err
		}
	}
	if cuda {
		if err := torch.CUDASynchronize(0); err != nil {
			return err
		}
	}
	per := time.Since(start).Seconds() / float64(iters)
	after, err := testutil.ReadProcStatus()
	if err != nil {
		return err
	}
	growth := after["VmHWM"] - before["VmRSS"]
	if cuda {
		_, peak, _, err := torch.CUDAMemory(0)
		if err != nil {
			return err
		}
		growth = peak - cudaBefore
	}
	fmt.Printf("per step: %g s, peak growth: %d bytes (%d of %d buckets started during the backward pass)\n",
		per, growth, red.StartedInBackward(), red.Buckets())
	return nil
}
