package dist

import (
	"encoding/binary"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"runtime"

	"github.com/dp2osr/dp2o/torch"
	"github.com/dp2osr/dp2o/torch/optim"
)

// cudaEnv puts the tiny runs on the GPU (Gloo all-reduces CUDA tensors,
// so that two ranks share one GPU): the reducer's buffers, hooks on the
// autograd engine's device thread and late gradients on CUDA.
const cudaEnv = "DP2O_DIST_TEST_CUDA"

// tinyRun is the data-parallel equivalence problem: a two-layer perceptron
// trained on random regression batches, with AdamW, or with SGD (momentum)
// and gradient accumulation over micro-batches. The global batch of each
// step is the same whatever the world size; each rank trains on its share,
// in accum micro-batches of equal size, and the gradients are averaged once
// per step, after the last micro-batch.
type tinyRun struct {
	in, hidden, out int64
	globalBatch     int
	steps           int
	seed            uint64
	sgd             bool
	accum           int
	overlap         bool  // reduce with a Reducer during the backward pass
	bucketBytes     int64 // 0: the default
	// checkpoint runs the second layer through torch.Checkpoint: its
	// weights get their gradients in the recomputation's backward pass.
	checkpoint bool
	// shared adds 0.1·Σb₂ to the loss outside the checkpointed layer, so
	// that b₂ is accumulated twice in one backward pass: with every
	// parameter in a bucket of its own, the outer use starts b₂'s bucket
	// before the recomputation adds to it (a late gradient).
	shared bool
	// spare adds a fifth parameter s, last (in the reducer's first
	// bucket): spareNever never uses it, as the last block of a FLUX
	// ControlNet leaves its text stream's weights unused; spareRow0 uses it
	// from the second step on, and only in the micro-batch holding global
	// row 0 (on rank 0 alone), adding 0.1·Σs over that micro-batch's rows.
	// One process gets no gradient for s while it is unused, and AdamW
	// leaves it alone (no weight decay): so must the ranks.
	spare spareUse
	// permuted hands the reducer the second layer's parameters before the
	// first's, as a FLUX ControlNet creates controlnet_x_embedder last and
	// uses it first: in reverse order the first bucket then waits for the
	// last gradient, until the reducer rebuilds its buckets in the order
	// the gradients came.
	permuted bool
	// mixed keeps the second layer in float64: the buckets hold one dtype
	// each.
	mixed bool
	// zero shards the optimizer's state over the ranks
	// (NewShardedOptimizer): each rank updates its parameters and
	// broadcasts them.
	zero bool
	// shardGrads (with zero and overlap) shards the gradients too
	// (Reducer.ShardGradients, ZeRO stage 2): each pass reduces each
	// bucket to its owner, which alone ends with its parameters' .grad.
	shardGrads bool
	// clip clips the gradients to this norm before each update
	// (Reducer.ClipGradNorm: over every rank's share when sharded).
	clip float64
}

type spareUse int

const (
	spareNone spareUse = iota
	spareNever
	spareRow0
)

var tinyRuns = []tinyRun{
	{in: 4, hidden: 8, out: 3, globalBatch: 6, steps: 4, seed: 1234, accum: 1},
	{in: 4, hidden: 8, out: 3, globalBatch: 12, steps: 3, seed: 99, sgd: true, accum: 3},
	{in: 4, hidden: 8, out: 3, globalBatch: 8, steps: 3, seed: 7, accum: 2, overlap: true, bucketBytes: 64},
	{in: 4, hidden: 8, out: 3, globalBatch: 8, steps: 3, seed: 11, accum: 2, overlap: true, bucketBytes: 64, checkpoint: true},
	{in: 4, hidden: 8, out: 3, globalBatch: 8, steps: 3, seed: 13, accum: 2, overlap: true, bucketBytes: 64, spare: spareNever},
	{in: 4, hidden: 8, out: 3, globalBatch: 8, steps: 4, seed: 17, accum: 2, overlap: true, bucketBytes: 64, spare: spareRow0},
	{in: 4, hidden: 8, out: 3, globalBatch: 8, steps: 4, seed: 19, accum: 2, spare: spareRow0},
	// The spare in the armed (only) micro-batch of rank 0: a late gradient
	// on one rank, zeros from the other.
	{in: 4, hidden: 8, out: 3, globalBatch: 8, steps: 4, seed: 31, accum: 1, overlap: true, bucketBytes: 64, spare: spareRow0},
	{in: 4, hidden: 8, out: 3, globalBatch: 4, steps: 2, seed: 5, accum: 1, overlap: true, bucketBytes: 4, checkpoint: true, shared: true},
	{in: 4, hidden: 8, out: 3, globalBatch: 8, steps: 3, seed: 23, accum: 1, overlap: true, bucketBytes: 64, permuted: true},
	{in: 4, hidden: 8, out: 3, globalBatch: 8, steps: 3, seed: 29, accum: 2, overlap: true, bucketBytes: 64, mixed: true},
	{in: 4, hidden: 8, out: 3, globalBatch: 6, steps: 4, seed: 1234, accum: 1, zero: true},
	{in: 4, hidden: 8, out: 3, globalBatch: 12, steps: 3, seed: 99, sgd: true, accum: 3, zero: true},
	{in: 4, hidden: 8, out: 3, globalBatch: 8, steps: 4, seed: 31, accum: 1, overlap: true, bucketBytes: 64, spare: spareRow0, zero: true},
	// Sharded gradients: accumulation (a reduce per pass), SGD's momentum,
	// a parameter some passes use on one rank only, late gradients (a
	// bucket per parameter), the first-used parameter created last, two
	// dtypes; and clipping by the norm over the ranks (tight enough to
	// clip every step), unsharded and sharded.
	{in: 4, hidden: 8, out: 3, globalBatch: 8, steps: 3, seed: 7, accum: 2, overlap: true, bucketBytes: 64, zero: true, shardGrads: true},
	{in: 4, hidden: 8, out: 3, globalBatch: 12, steps: 3, seed: 99, sgd: true, accum: 3, overlap: true, zero: true, shardGrads: true},
	{in: 4, hidden: 8, out: 3, globalBatch: 8, steps: 4, seed: 17, accum: 2, overlap: true, bucketBytes: 64, spare: spareRow0, zero: true, shardGrads: true},
	{in: 4, hidden: 8, out: 3, globalBatch: 4, steps: 2, seed: 5, accum: 1, overlap: true, bucketBytes: 4, checkpoint: true, shared: true, zero: true, shardGrads: true},
	{in: 4, hidden: 8, out: 3, globalBatch: 8, steps: 3, seed: 23, accum: 2, overlap: true, bucketBytes: 64, permuted: true, zero: true, shardGrads: true},
	{in: 4, hidden: 8, out: 3, globalBatch: 8, steps: 3, seed: 29, accum: 2, overlap: true, bucketBytes: 64, mixed: true, zero: true, shardGrads: true},
	{in: 4, hidden: 8, out: 3, globalBatch: 8, steps: 3, seed: 37, accum: 2, overlap: true, bucketBytes: 64, clip: 0.05},
	{in: 4, hidden: 8, out: 3, globalBatch: 8, steps: 3, seed: 37, accum: 2, overlap: true, bucketBytes: 64, clip: 0.05, zero: true, shardGrads: true},
}

// train builds the model (weights drawn from seed+rank, so only the
// broadcast makes the ranks agree), trains it in g and returns the final
// weights, flattened.
func (c tinyRun) train(g *Group) (weights []float32, err error) {
	// One OS thread, as preference's Trainer keeps: libtorch numbers the
	// autograd nodes per thread, and the order the gradients come in (which
	// the reducer's buckets follow after the first step) depends on it.
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	defer torch.Recover(&err)
	s := torch.NewScope()
	defer s.Close()
	dev := torch.CPU
	if os.Getenv(cudaEnv) == "1" {
		dev = torch.CUDA(0)
	}
	gen := torch.MustGenerator(torch.CPU, c.seed+uint64(g.Rank()))
	shapes := [][]int64{{c.hidden, c.in}, {c.hidden}, {c.out, c.hidden}, {c.out}}
	if c.spare != spareNone {
		shapes = append(shapes, []int64{c.out})
	}
	var params []*torch.Tensor
	var named []optim.Param
	for i, sh := range shapes {
		p := torch.Randn(sh, gen, torch.Float32, torch.CPU).MulScalar(0.5).ToDevice(dev)
		if c.mixed && (i == 2 || i == 3) {
			p = p.To(torch.Float64)
		}
		p.SetRequiresGrad(true)
		params = append(params, p)
		named = append(named, optim.Param{Name: fmt.Sprint("p", i), Tensor: p})
	}
	if err := g.BroadcastParameters(params); err != nil {
		return nil, err
	}
	build := func(ps []optim.Param) (optim.Optimizer, error) {
		if c.sgd {
			return optim.NewSGD(ps, optim.SGDConfig{LR: 0.05, Momentum: 0.9, WeightDecay: 1e-3})
		}
		cfg := optim.DefaultAdamW()
		cfg.LR = 1e-2
		return optim.NewAdamW(ps, cfg)
	}
	var opt optim.Optimizer
	if c.zero {
		opt, err = g.NewShardedOptimizer(named, build)
	} else {
		opt, err = build(named)
	}
	if err != nil {
		return nil, err
	}
	defer opt.Close()
	rows := make([]int, c.globalBatch)
	for i := range rows {
		rows[i] = i
	}
	mine, err := Batch(g, rows)
	if err != nil {
		return nil, err
	}
	if len(mine)%c.accum != 0 {
		return nil, fmt.Errorf("a share of %d rows does not split into %d micro-batches", len(mine), c.accum)
	}
	lo, n := int64(mine[0]), int64(len(mine)/c.accum)
	if c.bucketBytes > 0 {
		g.SetBucketBytes(c.bucketBytes)
		defer g.SetBucketBytes(DefaultBucketBytes)
	}
	var red *Reducer
	if c.overlap {
		order := []int{0, 1, 2, 3, 4}[:len(params)]
		if c.permuted {
			order = append([]int{2, 3, 0, 1}, order[4:]...)
		}
		handed := make([]*torch.Tensor, len(order))
		for j, i := range order {
			handed[j] = params[i]
		}
		if red, err = g.NewReducer(handed); err != nil {
			return nil, err
		}
		defer red.Close()
		if c.shardGrads {
			owners := opt.(*ShardedOptimizer).Owners()
			handedOwners := make([]int, len(order))
			for j, i := range order {
				handedOwners[j] = owners[i]
			}
			if err := red.ShardGradients(handedOwners); err != nil {
				return nil, err
			}
		}
	}
	for step := range c.steps {
		ss := torch.NewScope()
		data := torch.MustGenerator(torch.CPU, c.seed+1000+uint64(step))
		xs := torch.Randn([]int64{int64(c.globalBatch), c.in}, data, torch.Float32, torch.CPU).ToDevice(dev)
		ys := torch.Randn([]int64{int64(c.globalBatch), c.out}, data, torch.Float32, torch.CPU).ToDevice(dev)
		opt.ZeroGrad()
		for m := range int64(c.accum) {
			x, y := xs.Narrow(0, lo+m*n, n), ys.Narrow(0, lo+m*n, n)
			h := torch.Linear(x, params[0], params[1]).Tanh()
			layer2 := func(in []*torch.Tensor) []*torch.Tensor {
				if c.mixed {
					return []*torch.Tensor{torch.Linear(in[0].To(torch.Float64), params[2], params[3]).To(torch.Float32)}
				}
				return []*torch.Tensor{torch.Linear(in[0], params[2], params[3])}
			}
			var pred *torch.Tensor
			if c.checkpoint {
				pred = torch.Checkpoint(layer2, h)[0]
			} else {
				pred = layer2([]*torch.Tensor{h})[0]
			}
			loss := torch.MSELoss(pred, y)
			if c.shared {
				loss = loss.Add(params[3].Sum().MulScalar(0.1))
			}
			if c.spare == spareRow0 && step > 0 && lo+m*n == 0 {
				loss = loss.Add(params[4].Sum().MulScalar(0.1 / float64(n)))
			}
			if c.accum > 1 {
				loss = loss.DivScalar(float64(c.accum))
			}
			if red != nil {
				if err := red.Prepare(m == int64(c.accum)-1); err != nil {
					return nil, err
				}
			}
			loss.Backward(nil)
		}
		var err error
		if red != nil {
			err = red.Finish()
			// With a spare parameter or the first-used one in the first
			// bucket, the first step's buckets all wait for the backward
			// pass's end; from the second on the reducer no longer waits
			// for a gradient that does not come, and its buckets follow
			// the order the gradients came in.
			// With sharded gradients rank 0 starts every bucket but the
			// last in its first step's backward pass as they become ready,
			// whatever the order (a weight created last and used first, one
			// no rank uses), and announces them to the others, who follow
			// as their backward pass allows (on so small a model it may end
			// first).
			firstWaits := c.spare != spareNone || c.permuted
			switch over, nb := red.StartedInBackward(), red.Buckets(); {
			case err != nil || g.WorldSize() == 1:
			case step > 0 && over != nb-1:
				err = fmt.Errorf("%d of %d buckets started during the backward pass, want all but the last", over, nb)
			case step == 0 && c.shardGrads && g.Rank() == 0 && over != nb-1:
				err = fmt.Errorf("%d of %d buckets started during rank 0's first backward pass, want all but the last", over, nb)
			case step == 0 && !c.shardGrads && over == 0 && !firstWaits:
				err = fmt.Errorf("none of %d buckets started during the backward pass", nb)
			}
		} else {
			err = g.AverageGradients(params)
		}
		if err == nil && c.spare == spareNever {
			if gr := params[4].Grad(); gr != nil {
				err = fmt.Errorf("the parameter no rank used got a gradient, max |g| %g", gr.Abs().Max().Item())
			}
		}
		if err == nil && c.shardGrads {
			// Only the owner keeps a gradient.
			z := opt.(*ShardedOptimizer)
			for i, p := range params {
				if gr := p.Grad(); gr != nil && z.Owner(i) != g.Rank() {
					err = fmt.Errorf("rank %d holds a gradient of parameter %d, which rank %d owns", g.Rank(), i, z.Owner(i))
				}
			}
		}
		if err == nil && c.clip > 0 {
			var norm float64
			if red != nil {
				norm, err = red.ClipGradNorm(named, c.clip, 2)
			} else {
				norm, err = optim.ClipGradNorm(named, c.clip, 2)
			}
			if err == nil && norm <= c.clip {
				err = fmt.Errorf("gradient norm %g is within the clip %g: the run does not test clipping", norm, c.clip)
			}
		}
		if err == nil {
			err = opt.Step()
		}
		ss.Close()
		if err != nil {
			return nil, fmt.Errorf("step %d: %w", step, err)
		}
	}
	opt.ZeroGrad()
	for _, p := range params {
		weights = append(weights, p.Detach().ToDevice(torch.CPU).To(torch.Float32).Float32s()...)
	}
	return weights, nil
}

func weightsFile(dir string, run, rank int) string {
	return filepath.Join(dir, fmt.Sprintf("weights-run%d-rank%d.bin", run, rank))
}

func writeWeights(path string, w []float32) error {
	b := make([]byte, 4*len(w))
	for i, v := range w {
		binary.LittleEndian.PutUint32(b[4*i:], math.Float32bits(v))
	}
	return os.WriteFile(path, b, 0o644)
}

func readWeights(path string) ([]float32, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	w := make([]float32, len(b)/4)
	for i := range w {
		w[i] = math.Float32frombits(binary.LittleEndian.Uint32(b[4*i:]))
	}
	return w, nil
}

// runsEnv picks the worker's runs: "three" for threeRankRuns, tinyRuns
// otherwise.
const runsEnv = "DP2O_DIST_TEST_RUNS"

// threeRankRuns have sharded gradients over 3 ranks: accumulation, a
// weight some passes use on one rank only with the first-used weight
// created last and clipping, late gradients through a checkpointed layer.
var threeRankRuns = []tinyRun{
	{in: 4, hidden: 8, out: 3, globalBatch: 12, steps: 3, seed: 41, accum: 2, overlap: true, bucketBytes: 64, zero: true, shardGrads: true},
	{in: 4, hidden: 8, out: 3, globalBatch: 12, steps: 4, seed: 43, accum: 2, overlap: true, bucketBytes: 64, spare: spareRow0, permuted: true, clip: 0.05, zero: true, shardGrads: true},
	{in: 4, hidden: 8, out: 3, globalBatch: 6, steps: 2, seed: 47, accum: 1, overlap: true, bucketBytes: 4, checkpoint: true, shared: true, zero: true, shardGrads: true},
}

// workerDataParallel trains tiny as one rank and writes its final weights.
func workerDataParallel() int {
	g := join()
	if g == nil {
		return 1
	}
	defer g.Close()
	live := torch.LiveTensors()
	var err error
	runs := tinyRuns
	if os.Getenv(runsEnv) == "three" {
		runs = threeRankRuns
	}
	for i, run := range runs {
		var w []float32
		w, err = run.train(g)
		if n := torch.LiveTensors() - live; err == nil && n != 0 {
			err = fmt.Errorf("training leaked %d tensor handles", n)
		}
		if err == nil {
			err = writeWeights(weightsFile(os.Getenv(dirEnv), i, g.Rank()), w)
		}
		if err != nil {
			break
		}
	}
	if err == nil {
		err = g.Barrier()
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "rank %d: %v\n", g.Rank(), err)
		return 1
	}
	return 0
}
