package dist

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/dp2osr/dp2o/torch"
	"github.com/dp2osr/dp2o/torch/optim"
)

// TestPartition: ZeroRedundancyOptimizer's greedy partition, largest
// parameter first, each to the rank with the fewest elements so far.
func TestPartition(t *testing.T) {
	for _, c := range []struct {
		sizes []int64
		world int
		want  []int
	}{
		{[]int64{5, 3, 3, 1}, 2, []int{0, 1, 1, 0}},
		{[]int64{1, 2, 3, 4, 5, 6}, 3, []int{0, 1, 2, 2, 1, 0}},
		{[]int64{7, 7, 7}, 2, []int{0, 1, 0}}, // ties: list order, lowest rank
		{[]int64{4, 1}, 3, []int{0, 1}},       // rank 2 owns nothing
		{[]int64{4, 1, 9}, 1, []int{0, 0, 0}},
	} {
		if got := partition(c.sizes, c.world); !slices.Equal(got, c.want) {
			t.Errorf("partition(%v, %d) = %v, want %v", c.sizes, c.world, got, c.want)
		}
	}
}

// TestShardedOptimizer: 3 ranks train two copies of a small model on
// their own batches, one with AdamW, one with AdamW sharded over the
// ranks; the copies stay equal bit for bit. Rank 0's consolidated state is
// the unsharded optimizer's, bit for bit; a sharded optimizer that loads
// its part of the unsharded state from a file (as a run resumed at
// another world size) goes on as the unsharded one. An update that fails on one rank fails on all,
// well before the timeout.
func TestShardedOptimizer(t *testing.T) {
	requireGloo(t)
	res, _ := launch(t, "zero", 3, 90*time.Second, "DP2O_DIST_TIMEOUT=10m")
	requireAllOK(t, res)
}

// failingOptimizer fails its update from step fail on.
type failingOptimizer struct {
	optim.Optimizer
	steps, fail int
}

func (f *failingOptimizer) Step() error {
	f.steps++
	if f.steps >= f.fail {
		return errors.New("injected failure")
	}
	return f.Optimizer.Step()
}

func workerZero() int {
	live := torch.LiveTensors()
	g := join()
	if g == nil {
		return 1
	}
	defer g.Close()
	c := &checker{rank: g.Rank()}
	if err := zeroScenario(g, c); err != nil {
		c.errorf("%v", err)
	}
	if n := torch.LiveTensors() - live; n != 0 {
		c.errorf("%d tensor handles leaked", n)
	}
	if c.fails > 0 {
		return 1
	}
	if err := g.Barrier(); err != nil {
		c.errorf("barrier: %v", err)
		return 1
	}
	return 0
}

// zeroModel is a two-layer perceptron with two more parameters: one in a
// penalty term, one never used (no gradient: neither optimizer has state
// for it).
type zeroModel struct {
	params []*torch.Tensor
	named  []optim.Param
}

var zeroShapes = [][]int64{{16, 8}, {16}, {3, 16}, {3}, {40}, {5}}

func newZeroModel(like []*torch.Tensor) *zeroModel {
	m := &zeroModel{}
	for i, p := range like {
		q := torch.Unscope(p.Detach().Clone())
		q.SetRequiresGrad(true)
		m.params = append(m.params, q)
		m.named = append(m.named, optim.Param{Name: fmt.Sprint("layer", i/2, ".", []string{"weight", "bias"}[i%2]), Tensor: q})
	}
	return m
}

func (m *zeroModel) close() {
	for _, p := range m.params {
		p.Close()
	}
}

// backward computes the rank's loss on (x, y) and its gradients, then
// averages them over the ranks.
func (m *zeroModel) backward(g *Group, x, y *torch.Tensor) error {
	s := torch.NewScope()
	defer s.Close()
	h := torch.Linear(x, m.params[0], m.params[1]).Tanh()
	loss := torch.MSELoss(torch.Linear(h, m.params[2], m.params[3]), y).Add(m.params[4].Mul(m.params[4]).Sum().MulScalar(0.01))
	loss.Backward(nil)
	return g.AverageGradients(m.params)
}

func sameTensors(a, b []*torch.Tensor) error {
	for i := range a {
		if !bytes.Equal(a[i].Detach().Bytes(), b[i].Detach().Bytes()) {
			return fmt.Errorf("parameter %d differs", i)
		}
	}
	return nil
}

func zeroScenario(g *Group, c *checker) (err error) {
	defer torch.Recover(&err)
	s := torch.NewScope()
	defer s.Close()
	rank, world := g.Rank(), g.WorldSize()
	gen := torch.MustGenerator(torch.CPU, 40+uint64(rank))
	var init []*torch.Tensor
	for _, sh := range zeroShapes {
		init = append(init, torch.Randn(sh, gen, torch.Float32, torch.CPU))
	}
	if err := g.BroadcastParameters(init); err != nil {
		return err
	}
	cfg := optim.DefaultAdamW()
	cfg.LR = 1e-2
	build := func(ps []optim.Param) (optim.Optimizer, error) { return optim.NewAdamW(ps, cfg) }
	a, b := newZeroModel(init), newZeroModel(init)
	defer a.close()
	defer b.close()
	optA, err := build(a.named)
	if err != nil {
		return err
	}
	defer optA.Close()
	optB, err := g.NewShardedOptimizer(b.named, build)
	if err != nil {
		return err
	}
	defer optB.Close()
	optB.chunkBytes = 64 // several chunks per rank in Consolidate

	// Every parameter has one owner.
	counts := make([]float64, len(b.named))
	for i := range b.named {
		if optB.Owner(i) == rank {
			counts[i] = 1
		}
	}
	if len(optB.Owned()) != len(optB.Local().Params()) {
		c.errorf("the local optimizer has %d parameters, the rank owns %d", len(optB.Local().Params()), len(optB.Owned()))
	}
	total, err := g.AllReduceFloat64s(Sum, counts...)
	if err != nil {
		return err
	}
	for i, n := range total {
		if n != 1 {
			c.errorf("parameter %s has %v owners", b.named[i].Name, n)
		}
	}

	step := func(opt optim.Optimizer, k int) error {
		ss := torch.NewScope()
		defer ss.Close()
		data := torch.MustGenerator(torch.CPU, 1000+uint64(100*k+rank))
		x := torch.Randn([]int64{4, 8}, data, torch.Float32, torch.CPU)
		y := torch.Randn([]int64{4, 3}, data, torch.Float32, torch.CPU)
		optA.ZeroGrad()
		opt.ZeroGrad()
		if err := a.backward(g, x, y); err != nil {
			return err
		}
		if err := b.backward(g, x, y); err != nil {
			return err
		}
		if err := optA.Step(); err != nil {
			return err
		}
		if err := opt.Step(); err != nil {
			return err
		}
		return sameTensors(a.params, b.params)
	}
	const steps = 3
	for k := range steps {
		if err := step(optB, k); err != nil {
			return fmt.Errorf("step %d: %w", k, err)
		}
	}

	// Consolidation: rank 0 holds AdamW's state; the others none.
	stA, err := optA.StateDict()
	if err != nil {
		return err
	}
	defer stA.Close()
	if err := optB.Consolidate(); err != nil {
		return fmt.Errorf("consolidate: %w", err)
	}
	stB, err := optB.StateDict()
	if rank != 0 {
		if err == nil {
			stB.Close()
			c.errorf("rank %d's StateDict after Consolidate returned a state, want an error", rank)
		}
	} else if err != nil {
		c.errorf("rank 0's StateDict after Consolidate: %v", err)
	} else {
		compareStates(c, stB, stA)
		stB.Close()
		if again, err := optB.StateDict(); err == nil {
			again.Close()
			c.errorf("a second StateDict without Consolidate returned a state, want an error")
		}
	}

	// Loading a whole state: a new sharded optimizer over b takes its part
	// of the unsharded one's and goes on as it does.
	optC, err := g.NewShardedOptimizer(b.named, build)
	if err != nil {
		return err
	}
	defer optC.Close()
	bad := &optim.State{Tensors: map[string]*torch.Tensor{}, Metadata: stA.Metadata}
	for k, v := range stA.Tensors {
		bad.Tensors[k] = v
	}
	bad.Tensors["nowhere.exp_avg"] = stA.Tensors[b.named[0].Name+".exp_avg"]
	if err := optC.LoadStateDict(bad); err == nil || !strings.Contains(err.Error(), "nowhere.exp_avg") {
		c.errorf("a state with a key naming no parameter: %v, want an error naming it", err)
	}
	// Each rank reads its part of the saved state (KeepsState), and a key
	// naming no parameter, to refuse it.
	if !optC.KeepsState("nowhere.exp_avg") {
		c.errorf("KeepsState drops a key naming no parameter; LoadStateDict must see it to refuse it")
	}
	path := filepath.Join(os.Getenv(dirEnv), fmt.Sprintf("state-rank%d.safetensors", rank))
	if err := stA.Save(path); err != nil {
		return err
	}
	part, err := optim.OpenState(path, optC.KeepsState)
	if err != nil {
		return err
	}
	defer part.Close()
	var mine []string
	for _, k := range stA.Keys() {
		if r, _ := optC.keyOwner(k); r == rank {
			mine = append(mine, k)
		}
	}
	if !slices.Equal(part.Keys(), mine) {
		c.errorf("the rank's part of the state holds %v, its parameters' state is %v", part.Keys(), mine)
	}
	if err := optC.LoadStateDict(part); err != nil {
		return fmt.Errorf("load: %w", err)
	}
	if err := step(optC, steps); err != nil {
		return fmt.Errorf("the step after loading: %w", err)
	}

	// A failed update on the last rank: every rank's Step fails, the
	// others saying another rank's did.
	optD, err := g.NewShardedOptimizer(b.named, func(ps []optim.Param) (optim.Optimizer, error) {
		o, err := build(ps)
		if err != nil || rank != world-1 {
			return o, err
		}
		return &failingOptimizer{Optimizer: o, fail: 1}, nil
	})
	if err != nil {
		return err
	}
	defer optD.Close()
	err = step(optD, steps+1)
	want := "another rank's update failed"
	if rank == world-1 {
		want = "injected failure"
	}
	if err == nil || !strings.Contains(err.Error(), want) {
		c.errorf("a step failing on rank %d: %v, want an error saying %q", world-1, err, want)
	}
	optA.ZeroGrad()
	optD.ZeroGrad()
	return nil
}

// compareStates wants got equal to want bit for bit: keys, tensors and
// metadata.
func compareStates(c *checker, got, want *optim.State) {
	if len(got.Tensors) != len(want.Tensors) {
		c.errorf("consolidated state: %d tensors, the unsharded optimizer's %d", len(got.Tensors), len(want.Tensors))
	}
	for k, w := range want.Tensors {
		g, ok := got.Tensors[k]
		switch {
		case !ok:
			c.errorf("consolidated state lacks %s", k)
		case g.DType() != w.DType() || !slices.Equal(g.Shape(), w.Shape()) || !bytes.Equal(g.Bytes(), w.Bytes()):
			c.errorf("consolidated %s differs from the unsharded optimizer's", k)
		}
	}
	for k, w := range want.Metadata {
		if got.Metadata[k] != w {
			c.errorf("consolidated metadata %s = %q, want %q", k, got.Metadata[k], w)
		}
	}
}
