package preference

import (
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/dp2osr/dp2o/diffusion"
	"github.com/dp2osr/dp2o/diffusion/scheduler"
	"github.com/dp2osr/dp2o/diffusion/unet"
	"github.com/dp2osr/dp2o/imageio"
	"github.com/dp2osr/dp2o/internal/testutil"
	"github.com/dp2osr/dp2o/torch"
	"github.com/dp2osr/dp2o/torch/optim"
)

// The bundled tiny SD2 model (assets/tiny-sd2): the frozen parts are
// loaded once; every test trains a fresh ControlNet.
const (
	tinySD2Dir    = "../assets/tiny-sd2"
	tinySD2CNFile = "../assets/tiny-sd2/controlnet/model.safetensors"
)

var tinyPipe struct {
	once sync.Once
	p    *diffusion.SD2
	err  error
}

func tinySD2Pipeline(t *testing.T) *diffusion.SD2 {
	t.Helper()
	tinyPipe.once.Do(func() {
		tinyPipe.p, tinyPipe.err = diffusion.LoadSD2(tinySD2Dir, tinySD2CNFile,
			diffusion.LoadOptions{Device: testutil.Device(t), DType: torch.Float32})
	})
	if tinyPipe.err != nil {
		t.Fatal(tinyPipe.err)
	}
	return tinyPipe.p
}

// toySD2 is a trainer and a loader over the tiny pipeline with a fresh
// policy; close releases everything but the shared pipeline.
type toySD2 struct {
	bb     *SD2Backbone
	tr     *Trainer
	loader *Loader
	close  func()
}

func newToySD2(t *testing.T, pairs string, cfg TrainConfig, perBatch int, seed uint64) *toySD2 {
	t.Helper()
	p := tinySD2Pipeline(t)
	cn, err := unet.LoadControlNetFileFromUNet(p.UNet.Config, nil, tinySD2CNFile, torch.Float32, testutil.Device(t))
	if err != nil {
		t.Fatal(err)
	}
	sched, err := scheduler.NewDDPM(p.Scheduler)
	if err != nil {
		t.Fatal(err)
	}
	bb, err := NewSD2Backbone(p.UNet, cn, sched)
	if err != nil {
		t.Fatal(err)
	}
	tr, err := NewTrainer(bb, cfg)
	if err != nil {
		t.Fatal(err)
	}
	dc, err := SD2Data(p)
	if err != nil {
		t.Fatal(err)
	}
	pf, err := LoadPairs(pairs)
	if err != nil {
		t.Fatal(err)
	}
	l, err := NewLoader(dc, pf, filepath.Dir(pairs), perBatch, seed)
	if err != nil {
		t.Fatal(err)
	}
	return &toySD2{bb: bb, tr: tr, loader: l, close: func() {
		l.Close()
		tr.Close()
		bb.Close()
		cn.Close()
		sched.Close()
	}}
}

// writeToyPairs writes a toy preference set under dir: groups of an LR
// image (size/4) and m candidates (size×size) whose rewards make the smooth
// candidates winners and the noisy ones losers; the pair file keeps the
// top n and bottom n. It returns the pair file's path.
func writeToyPairs(t *testing.T, dir string, groups, m, n, size int) string {
	t.Helper()
	r := rand.New(rand.NewPCG(uint64(groups), uint64(size)))
	var gs []Group
	for g := range groups {
		lr := imageio.NewRGB8(size/4, size/4)
		for i := range lr.Pix {
			lr.Pix[i] = uint8(40*g + i%97)
		}
		gr := Group{ID: fmt.Sprintf("g%d", g), LR: fmt.Sprintf("g%d_lr.png", g), Prompt: fmt.Sprintf("toy scene %d", g)}
		for c := range m {
			img := imageio.NewRGB8(size, size)
			noise := float64(c) / float64(m-1) // candidate 0 smooth … m−1 noisy
			for y := range size {
				for x := range size {
					for ch := range 3 {
						v := 128 + 100*math.Sin(float64(x+2*y+17*ch+9*g)/7) + noise*120*(r.Float64()-0.5)
						img.Pix[3*(y*size+x)+ch] = uint8(max(0, min(255, v)))
					}
				}
			}
			name := fmt.Sprintf("g%d_c%d.png", g, c)
			if err := imageio.SavePNG(filepath.Join(dir, name), img); err != nil {
				t.Fatal(err)
			}
			gr.Candidates = append(gr.Candidates, name)
			gr.Reward = append(gr.Reward, 1-noise+0.01*float64(g))
		}
		if err := imageio.SavePNG(filepath.Join(dir, gr.LR), lr); err != nil {
			t.Fatal(err)
		}
		gs = append(gs, gr)
	}
	pf, err := BuildPairs(gs, nil, n)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "pairs.json")
	if err := pf.Save(path); err != nil {
		t.Fatal(err)
	}
	return path
}

func frozenFingerprints(t *testing.T, bb Backbone, p *diffusion.SD2) map[string]Fingerprint {
	t.Helper()
	var vae, text []optim.Param
	for _, n := range p.VAE.Params.Names {
		vae = append(vae, optim.Param{Name: n, Tensor: p.VAE.Params.Tensors[n]})
	}
	for _, n := range p.TextEncoder.Params.Names {
		text = append(text, optim.Param{Name: n, Tensor: p.TextEncoder.Params.Tensors[n]})
	}
	return map[string]Fingerprint{"base": fingerprint(t, bb.BaseParams()), "reference": fingerprint(t, bb.ReferenceParams()),
		"vae": fingerprint(t, vae), "text_encoder": fingerprint(t, text)}
}

// TestTrainSD2ToyLearns trains the tiny SD2 ControlNet on a toy set whose
// winners are the smooth images: a few batches drawn from the loader (every
// pair, several timesteps and noises) are trained on in turn; on them the
// DPO loss starts at exactly ln 2 with accuracy 0 (policy = reference) and
// falls while the implicit accuracy rises; the ControlNet moved; every
// frozen weight (base, reference, VAE, text encoder) stays bit-identical.
func TestTrainSD2ToyLearns(t *testing.T) {
	p := tinySD2Pipeline(t)
	testutil.NoLeak(t)
	dir := t.TempDir()
	pairs := writeToyPairs(t, dir, 2, 4, 2, 64)
	cfg := DefaultTrainConfig()
	cfg.AdamW.LR = 1e-4
	toy := newToySD2(t, pairs, cfg, 4, 7)
	defer toy.close()
	toyLearns(t, toy.tr, toy.loader, toy.bb.PolicyParams,
		func() map[string]Fingerprint { return frozenFingerprints(t, toy.bb, p) }, 3, 4)
}

// toyLearns draws the given number of batches from loader, trains on them
// in turn for epochs passes, and checks what the toy-learning tests of
// both backbones require: before training the DPO loss on them is ln 2
// with accuracy 0 (policy = reference); after, the loss fell and the
// implicit accuracy rose; the policy moved; and every frozen weight
// (frozen() before and after) stayed bit-identical.
func toyLearns(t *testing.T, tr *Trainer, loader *Loader, policy func() []optim.Param, frozen func() map[string]Fingerprint, draws, epochs int) {
	t.Helper()
	frozen0 := frozen()
	policy0 := fingerprint(t, policy())
	var batches []*Batch
	defer func() {
		for _, b := range batches {
			b.Close()
		}
	}()
	for range draws {
		b, err := loader.Next()
		if err != nil {
			t.Fatal(err)
		}
		batches = append(batches, b)
	}
	evaluate := func() (loss, acc float64) {
		for _, b := range batches {
			ms, err := tr.Evaluate(b)
			if err != nil {
				t.Fatal(err)
			}
			loss += ms.Loss / float64(draws)
			acc += ms.Accuracy / float64(draws)
		}
		return loss, acc
	}
	loss0, acc0 := evaluate()
	if math.Abs(loss0-math.Ln2) > 1e-7 || acc0 != 0 {
		t.Fatalf("before training: loss %v accuracy %v, want ln 2 and 0 (policy = reference)", loss0, acc0)
	}
	for range epochs {
		for _, b := range batches {
			if _, err := tr.Step([]*Batch{b}); err != nil {
				t.Fatal(err)
			}
		}
	}
	loss1, acc1 := evaluate()
	t.Logf("%d steps: loss %.4f → %.4f, implicit accuracy %.2f → %.2f", draws*epochs, loss0, loss1, acc0, acc1)
	if !(loss1 < loss0) || !(acc1 > acc0) {
		t.Fatalf("no learning: loss %v → %v, accuracy %v → %v", loss0, loss1, acc0, acc1)
	}
	if fingerprint(t, policy()) == policy0 {
		t.Fatal("the ControlNet did not move")
	}
	for k, fp := range frozen() {
		if fp != frozen0[k] {
			t.Fatalf("frozen %s changed", k)
		}
	}
}

func policyBytes(t *testing.T, ps []optim.Param) map[string]*torch.Tensor {
	t.Helper()
	out := map[string]*torch.Tensor{}
	for _, p := range ps {
		out[p.Name] = torch.Scoped(func() *torch.Tensor { return p.Tensor.Detach().ToDevice(torch.CPU).Clone() })
	}
	t.Cleanup(func() {
		for _, v := range out {
			v.Close()
		}
	})
	return out
}

// TestTrainSD2Resume: k steps straight equal j steps, a checkpoint, a
// fresh process state resumed from it, and k − j more steps — bit for bit
// on the CPU (weights, losses), with gradient accumulation, a warm-up
// schedule and a shuffled, cached data stream.
func TestTrainSD2Resume(t *testing.T) {
	tinySD2Pipeline(t)
	testutil.NoLeak(t)
	dir := t.TempDir()
	pairs := writeToyPairs(t, dir, 2, 4, 2, 64)
	cfg := DefaultTrainConfig()
	cfg.AdamW.LR = 1e-3
	cfg.GradAccum = 2
	cfg.Schedule = optim.ScheduleConfig{Name: "constant_with_warmup", WarmupSteps: 2}
	const k, j, seed = 4, 2, 11
	run := func(toy *toySD2, n int) []float64 {
		var losses []float64
		for range n {
			var bs []*Batch
			for range cfg.GradAccum {
				b, err := toy.loader.Next()
				if err != nil {
					t.Fatal(err)
				}
				bs = append(bs, b)
			}
			st, err := toy.tr.Step(bs)
			for _, b := range bs {
				b.Close()
			}
			if err != nil {
				t.Fatal(err)
			}
			losses = append(losses, st.Loss)
		}
		return losses
	}
	straight := newToySD2(t, pairs, cfg, 2, seed)
	wantLoss := run(straight, k)
	want := policyBytes(t, straight.bb.PolicyParams())
	straight.close()

	first := newToySD2(t, pairs, cfg, 2, seed)
	gotLoss := run(first, j)
	ckpt := filepath.Join(dir, "out", fmt.Sprintf("checkpoint-%d", j))
	if err := first.tr.SaveCheckpoint(ckpt, first.loader); err != nil {
		t.Fatal(err)
	}
	first.close()

	resumed := newToySD2(t, pairs, cfg, 2, seed)
	defer resumed.close()
	latest, err := LatestCheckpoint(filepath.Join(dir, "out"))
	if err != nil || latest != ckpt {
		t.Fatalf("latest checkpoint %q (%v), want %q", latest, err, ckpt)
	}
	if err := resumed.tr.LoadCheckpoint(ckpt, resumed.loader); err != nil {
		t.Fatal(err)
	}
	if resumed.tr.StepsDone != j {
		t.Fatalf("resumed at step %d, want %d", resumed.tr.StepsDone, j)
	}
	gotLoss = append(gotLoss, run(resumed, k-j)...)
	for i := range wantLoss {
		if gotLoss[i] != wantLoss[i] {
			t.Fatalf("step %d: loss %v resumed, %v straight", i, gotLoss[i], wantLoss[i])
		}
	}
	for _, p := range resumed.bb.PolicyParams() {
		c := torch.Scoped(func() *torch.Tensor { return p.Tensor.Detach().ToDevice(torch.CPU) })
		testutil.AssertEqual(t, "resumed "+p.Name, c, want[p.Name])
		c.Close()
	}
}

// TestCheckpointLoadsInPipeline: the checkpoint's model.safetensors is a
// released-layout ControlNet that diffusion.LoadSD2 loads as it is.
func TestCheckpointLoadsInPipeline(t *testing.T) {
	tinySD2Pipeline(t)
	testutil.NoLeak(t)
	dir := t.TempDir()
	pairs := writeToyPairs(t, dir, 1, 2, 1, 64)
	toy := newToySD2(t, pairs, DefaultTrainConfig(), 1, 1)
	defer toy.close()
	b, err := toy.loader.Next()
	if err != nil {
		t.Fatal(err)
	}
	_, err = toy.tr.Step([]*Batch{b})
	b.Close()
	if err != nil {
		t.Fatal(err)
	}
	ckpt := filepath.Join(dir, "checkpoint-1")
	if err := toy.tr.SaveCheckpoint(ckpt, toy.loader); err != nil {
		t.Fatal(err)
	}
	p, err := diffusion.LoadSD2(tinySD2Dir, filepath.Join(ckpt, CheckpointModel), diffusion.LoadOptions{Device: testutil.Device(t), DType: torch.Float32})
	if err != nil {
		t.Fatalf("the pipeline does not load the trained checkpoint: %v", err)
	}
	defer p.Close()
	got := map[string]*torch.Tensor{}
	for _, q := range p.ControlNet.Parameters() {
		got[q.Name] = q.Tensor
	}
	for _, q := range toy.bb.PolicyParams() {
		a := torch.Scoped(func() *torch.Tensor { return got[q.Name].ToDevice(torch.CPU) })
		b := torch.Scoped(func() *torch.Tensor { return q.Tensor.Detach().ToDevice(torch.CPU) })
		testutil.AssertEqual(t, "reloaded "+q.Name, a, b)
		a.Close()
		b.Close()
	}
}

// TestTrainBadInput: a pair file naming a missing image, a pair of two
// sizes, a truncated or foreign checkpoint are clear errors.
func TestTrainBadInput(t *testing.T) {
	tinySD2Pipeline(t)
	testutil.NoLeak(t)
	dir := t.TempDir()
	pairs := writeToyPairs(t, dir, 1, 2, 1, 64)
	pf, err := LoadPairs(pairs)
	if err != nil {
		t.Fatal(err)
	}
	dc, err := SD2Data(tinySD2Pipeline(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Run("missing image", func(t *testing.T) {
		bad := *pf
		bad.Groups = append([]Group(nil), pf.Groups...)
		bad.Groups[0].Candidates = append([]string(nil), pf.Groups[0].Candidates...)
		bad.Groups[0].Candidates[pf.Pairs[0].Loser] = "nowhere.png"
		_, err := NewLoader(dc, &bad, dir, 1, 1)
		if err == nil || !contains2(err.Error(), "loser image", "nowhere.png") {
			t.Fatalf("got %v, want an error naming the missing loser image", err)
		}
	})
	t.Run("mismatched sizes", func(t *testing.T) {
		w := pf.Groups[0].Candidates[pf.Pairs[0].Winner]
		if err := imageio.SavePNG(filepath.Join(dir, w), imageio.NewRGB8(32, 64)); err != nil {
			t.Fatal(err)
		}
		l, err := NewLoader(dc, pf, dir, 1, 1)
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		_, err = l.Next()
		if err == nil || !contains2(err.Error(), "32×64", "one size") {
			t.Fatalf("got %v, want a size mismatch error", err)
		}
	})
	t.Run("corrupt checkpoint", func(t *testing.T) {
		pairs := writeToyPairs(t, t.TempDir(), 1, 2, 1, 64)
		toy := newToySD2(t, pairs, DefaultTrainConfig(), 1, 1)
		defer toy.close()
		ckpt := filepath.Join(dir, "checkpoint-0")
		if err := toy.tr.SaveCheckpoint(ckpt, toy.loader); err != nil {
			t.Fatal(err)
		}
		model := filepath.Join(ckpt, CheckpointModel)
		data, err := os.ReadFile(model)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(model, data[:len(data)/2], 0o644); err != nil {
			t.Fatal(err)
		}
		if err := toy.tr.LoadCheckpoint(ckpt, toy.loader); err == nil || !contains2(err.Error(), "checkpoint", CheckpointModel) {
			t.Fatalf("truncated model: got %v", err)
		}
		if err := os.WriteFile(filepath.Join(ckpt, CheckpointState), []byte("{not json"), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := toy.tr.LoadCheckpoint(ckpt, toy.loader); err == nil || !contains2(err.Error(), CheckpointState, "") {
			t.Fatalf("broken state: got %v", err)
		}
		if err := toy.tr.LoadCheckpoint(filepath.Join(dir, "absent"), toy.loader); err == nil {
			t.Fatal("a missing checkpoint loaded")
		}
	})
}

func contains2(s, a, b string) bool {
	return strings.Contains(s, a) && strings.Contains(s, b)
}
