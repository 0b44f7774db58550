package preference

import (
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/dp2osr/dp2o/internal/testutil"
	"github.com/dp2osr/dp2o/torch"
	"github.com/dp2osr/dp2o/torch/optim"
)

// TestLoaderShard: the shards of world loaders (SetShard) are, bit for bit,
// the matching rows of one unsharded loader's batches over several batches
// (the generator advances alike), and their loss scales average to 1 and
// weigh each share by its part of the batch's weight.
func TestLoaderShard(t *testing.T) {
	tinySD2Pipeline(t)
	testutil.NoLeak(t)
	const world, perRank, batches = 2, 2, 3
	dir := t.TempDir()
	pairs := writeToyPairs(t, dir, 2, 4, 2, 32)
	pf, err := LoadPairs(pairs)
	if err != nil {
		t.Fatal(err)
	}
	for i := range pf.Pairs {
		pf.Pairs[i].Weight = 0.5 + float64(i%3)
	}
	if err := pf.Save(pairs); err != nil {
		t.Fatal(err)
	}
	whole := newToySD2(t, pairs, DefaultTrainConfig(), world*perRank, 9)
	defer whole.close()
	ranks := make([]*toySD2, world)
	for r := range ranks {
		ranks[r] = newToySD2(t, pairs, DefaultTrainConfig(), world*perRank, 9)
		defer ranks[r].close()
		if err := ranks[r].loader.SetShard(r, world); err != nil {
			t.Fatal(err)
		}
	}
	if err := whole.loader.SetShard(0, 3); err == nil {
		t.Error("a batch of 4 split over 3 ranks was accepted")
	}
	if err := whole.loader.SetShard(2, 2); err == nil {
		t.Error("rank 2 of 2 was accepted")
	}
	for i := range batches {
		w, err := whole.loader.Next()
		if err != nil {
			t.Fatal(err)
		}
		if w.LossScale != 0 {
			t.Errorf("batch %d: an unsharded batch has loss scale %v", i, w.LossScale)
		}
		ws := w.Weight.Float64s()
		var total, scales float64
		for _, v := range ws {
			total += v
		}
		for r, rl := range ranks {
			b, err := rl.loader.Next()
			if err != nil {
				t.Fatal(err)
			}
			lo := int64(r * perRank)
			if b.Pairs() != perRank {
				t.Fatalf("batch %d rank %d: %d pairs, want %d", i, r, b.Pairs(), perRank)
			}
			whole := batchTensors(w)
			for k, c := range batchTensors(b) {
				s := torch.NewScope()
				testutil.AssertEqual(t, fmt.Sprintf("batch %d rank %d %s", i, r, c.name), c.t.Contiguous(), whole[k].t.Narrow(0, lo, perRank).Contiguous())
				s.Close()
			}
			var mine float64
			for _, v := range ws[lo : lo+perRank] {
				mine += v
			}
			if d := b.LossScale - world*mine/total; d > 1e-12 || d < -1e-12 {
				t.Errorf("batch %d rank %d: loss scale %v, want %v", i, r, b.LossScale, world*mine/total)
			}
			scales += b.LossScale
			b.Close()
		}
		if d := scales/world - 1; d > 1e-12 || d < -1e-12 {
			t.Errorf("batch %d: the loss scales average to %v, want 1", i, scales/world)
		}
		w.Close()
	}
}

// namedTensor is one tensor of a batch.
type namedTensor struct {
	name string
	t    *torch.Tensor
}

// batchTensors lists the per-pair tensors of a batch, for comparing
// batches (the same list, in the same order, for every batch of a kind).
func batchTensors(b *Batch) []namedTensor {
	out := []namedTensor{{"x0_w", b.X0W}, {"x0_l", b.X0L}, {"noise", b.Noise}, {"timesteps", b.Timesteps},
		{"control", b.Control}, {"text", b.Text}, {"weight", b.Weight}}
	if b.Pooled != nil {
		out = append(out, namedTensor{"pooled", b.Pooled})
	}
	return out
}

// TestTrainReduceGradientsError: a failing ReduceGradients (a collective
// that broke) aborts the step before the optimizer: no weight changes, no
// step counted; it runs before clipping and sees the
// accumulated gradients.
func TestTrainReduceGradientsError(t *testing.T) {
	tinySD2Pipeline(t)
	dir := t.TempDir()
	pairs := writeToyPairs(t, dir, 2, 4, 1, 32)
	toy := newToySD2(t, pairs, DefaultTrainConfig(), 1, 4)
	defer toy.close()
	before := policyBytes(t, toy.bb.PolicyParams())
	sawGrad := false
	toy.tr.ReduceGradients = func(ps []optim.Param) error {
		for _, p := range ps {
			if g := p.Tensor.Grad(); g != nil {
				sawGrad = true
				g.Close()
			}
		}
		return errors.New("peer gone")
	}
	b, err := toy.loader.Next()
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	_, err = toy.tr.Step([]*Batch{b})
	if err == nil || !strings.Contains(err.Error(), "peer gone") {
		t.Fatalf("Step with a failing ReduceGradients: %v", err)
	}
	if !sawGrad {
		t.Error("ReduceGradients saw no gradient")
	}
	if toy.tr.StepsDone != 0 {
		t.Errorf("%d steps counted", toy.tr.StepsDone)
	}
	for _, p := range toy.bb.PolicyParams() {
		got := torch.Scoped(func() *torch.Tensor { return p.Tensor.Detach().ToDevice(torch.CPU) })
		testutil.AssertEqual(t, p.Name, got, before[p.Name])
		got.Close()
	}
}

// recordingSync is a GradientSync that logs the calls the trainer makes
// and checks, at Finish, that the last backward has left gradients.
type recordingSync struct {
	calls     []string
	params    []optim.Param
	finishErr error
}

func (r *recordingSync) Prepare(sync bool) error {
	r.calls = append(r.calls, fmt.Sprintf("prepare(%v)", sync))
	return nil
}

func (r *recordingSync) Abort() error {
	r.calls = append(r.calls, "abort")
	return errors.New("aborted")
}

func (r *recordingSync) Finish() error {
	grads := 0
	for _, p := range r.params {
		if g := p.Tensor.Grad(); g != nil {
			grads++
			g.Close()
		}
	}
	r.calls = append(r.calls, fmt.Sprintf("finish(grads=%v)", grads == len(r.params)))
	return r.finishErr
}

// TestTrainSyncProtocol: with Trainer.Sync set (the overlapped reducer's
// place), Step arms it before every accumulated batch, reducing only on
// the last one, and Update waits for it before ReduceGradients and
// clipping. A failing Finish aborts the step before the optimizer, and
// Update outside Step is refused.
func TestTrainSyncProtocol(t *testing.T) {
	tinySD2Pipeline(t)
	dir := t.TempDir()
	pairs := writeToyPairs(t, dir, 2, 4, 1, 32)
	cfg := DefaultTrainConfig()
	cfg.GradAccum = 3
	toy := newToySD2(t, pairs, cfg, 1, 4)
	defer toy.close()
	rec := &recordingSync{params: toy.bb.PolicyParams()}
	toy.tr.Sync = rec
	toy.tr.ReduceGradients = func([]optim.Param) error {
		rec.calls = append(rec.calls, "reduce")
		return nil
	}
	batches := func() []*Batch {
		var bs []*Batch
		for range cfg.GradAccum {
			b, err := toy.loader.Next()
			if err != nil {
				t.Fatal(err)
			}
			bs = append(bs, b)
		}
		return bs
	}
	bs := batches()
	if _, err := toy.tr.Step(bs); err != nil {
		t.Fatal(err)
	}
	for _, b := range bs {
		b.Close()
	}
	var want []string
	for i := range cfg.GradAccum {
		want = append(want, fmt.Sprintf("prepare(%v)", i == cfg.GradAccum-1))
	}
	want = append(want, "finish(grads=true)", "reduce")
	if strings.Join(rec.calls, " ") != strings.Join(want, " ") {
		t.Errorf("calls %v, want %v", rec.calls, want)
	}
	if toy.tr.StepsDone != 1 {
		t.Errorf("%d steps counted", toy.tr.StepsDone)
	}

	before := policyBytes(t, toy.bb.PolicyParams())
	rec.finishErr = errors.New("peer gone")
	bs = batches()
	_, err := toy.tr.Step(bs)
	for _, b := range bs {
		b.Close()
	}
	if err == nil || !strings.Contains(err.Error(), "peer gone") {
		t.Fatalf("Step with a failing Finish: %v", err)
	}
	if toy.tr.StepsDone != 1 {
		t.Errorf("%d steps counted after the failed one", toy.tr.StepsDone)
	}
	for _, p := range toy.bb.PolicyParams() {
		got := torch.Scoped(func() *torch.Tensor { return p.Tensor.Detach().ToDevice(torch.CPU) })
		testutil.AssertEqual(t, p.Name, got, before[p.Name])
		got.Close()
	}
	if _, _, _, err := toy.tr.Update(); err == nil || !strings.Contains(err.Error(), "Step") {
		t.Errorf("Update outside Step with Sync set: %v", err)
	}

	// A batch that fails (its text embedding closed), the first or the
	// last, whose backward pass the sync was armed for: Step aborts the
	// sync's step, so that the other ranks fail with it rather than wait
	// or average a partial gradient.
	for _, c := range []struct {
		broken int
		want   string
	}{{0, "prepare(false) abort"}, {cfg.GradAccum - 1, "prepare(false) prepare(false) prepare(true) abort"}} {
		rec.finishErr, rec.calls = nil, nil
		bs = batches()
		bs[c.broken].Text.Close()
		_, err = toy.tr.Step(bs)
		for _, b := range bs {
			b.Close()
		}
		if err == nil {
			t.Fatalf("Step with broken batch %d: no error", c.broken)
		}
		if strings.Join(rec.calls, " ") != c.want {
			t.Errorf("calls after failing batch %d: %v, want %v", c.broken, rec.calls, c.want)
		}
		if toy.tr.StepsDone != 1 {
			t.Errorf("%d steps counted after the failed batch %d", toy.tr.StepsDone, c.broken)
		}
	}
}
