package preference

import (
	"path/filepath"
	"sync"
	"testing"

	"github.com/dp2osr/dp2o/flow"
	"github.com/dp2osr/dp2o/flow/transformer"
	"github.com/dp2osr/dp2o/internal/testutil"
	"github.com/dp2osr/dp2o/torch"
	"github.com/dp2osr/dp2o/torch/optim"
)

// The bundled tiny C-FLUX pipeline (assets/tiny-flux): the frozen parts
// are loaded once; every test trains a fresh ControlNet.
const (
	tinyFluxDir    = "../assets/tiny-flux"
	tinyFluxCNFile = "../assets/tiny-flux/controlnet/model.safetensors"
)

var tinyFluxPipe struct {
	once sync.Once
	p    *flow.CFLUX
	err  error
}

func tinyFluxPipeline(t *testing.T) *flow.CFLUX {
	t.Helper()
	tinyFluxPipe.once.Do(func() {
		o := flow.DefaultLoadOptions()
		o.Device, o.DType, o.NoAutocast = testutil.Device(t), torch.Float32, true
		tinyFluxPipe.p, tinyFluxPipe.err = flow.LoadCFLUX(tinyFluxDir, tinyFluxCNFile, o)
	})
	if tinyFluxPipe.err != nil {
		t.Fatal(tinyFluxPipe.err)
	}
	return tinyFluxPipe.p
}

// toyFlux is a trainer and a loader over the tiny C-FLUX pipeline with a
// fresh policy (the bundled ControlNet, configured by the config.json
// beside it); close releases everything but the shared pipeline.
type toyFlux struct {
	bb     *FluxBackbone
	tr     *Trainer
	loader *Loader
	close  func()
}

func newToyFlux(t *testing.T, pairs string, cfg TrainConfig, perBatch int, seed uint64) *toyFlux {
	t.Helper()
	p := tinyFluxPipeline(t)
	ccfg, err := transformer.LoadConfig(filepath.Join(filepath.Dir(tinyFluxCNFile), "config.json"))
	if err != nil {
		t.Fatal(err)
	}
	cn, err := transformer.LoadControlNetFile(tinyFluxCNFile, ccfg, torch.Float32, testutil.Device(t))
	if err != nil {
		t.Fatal(err)
	}
	bb, err := NewFluxBackbone(p.Transformer, cn)
	if err != nil {
		cn.Close()
		t.Fatal(err)
	}
	tr, err := NewTrainer(bb, cfg)
	if err != nil {
		bb.Close()
		cn.Close()
		t.Fatal(err)
	}
	dc, err := FluxData(p)
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
	return &toyFlux{bb: bb, tr: tr, loader: l, close: func() {
		l.Close()
		tr.Close()
		bb.Close()
		cn.Close()
	}}
}

// fluxFrozenFingerprints are the fingerprints of every frozen weight of
// C-FLUX training: the transformer, the reference ControlNet, the VAE and
// both text encoders (CLIP and T5).
func fluxFrozenFingerprints(t *testing.T, bb Backbone, p *flow.CFLUX) map[string]Fingerprint {
	t.Helper()
	if p.VAE.Params == nil || p.TextEncoder == nil || p.TextEncoder.Params == nil ||
		p.TextEncoder2 == nil || p.TextEncoder2.Params == nil {
		t.Fatal("the tiny C-FLUX pipeline does not own its VAE and text encoder weights")
	}
	return map[string]Fingerprint{"transformer": fingerprint(t, bb.BaseParams()), "reference": fingerprint(t, bb.ReferenceParams()),
		"vae": fingerprint(t, optim.Named(p.VAE.Params)), "text_encoder": fingerprint(t, optim.Named(p.TextEncoder.Params)),
		"text_encoder_2": fingerprint(t, optim.Named(p.TextEncoder2.Params))}
}

// TestTrainFluxToyLearns trains the tiny C-FLUX ControlNet on the toy set
// whose winners are the smooth images (32×32 candidates: a multiple of the
// VAE factor × the 2×2 packing): two batches of two pairs drawn from the
// shuffled loader (half of the toy set's pairs, each with its own
// logit-normal timestep and noise) are trained on in turn, twice, at a
// small learning rate; on them the DPO loss starts at ln 2 with accuracy 0
// (policy = reference) and falls while the implicit accuracy rises; the
// ControlNet moved; every frozen weight (transformer, reference, VAE, CLIP
// and T5 text encoders) stays bit-identical.
func TestTrainFluxToyLearns(t *testing.T) {
	p := tinyFluxPipeline(t)
	testutil.NoLeak(t)
	dir := t.TempDir()
	pairs := writeToyPairs(t, dir, 2, 4, 2, 32)
	cfg := DefaultTrainConfig()
	cfg.AdamW.LR = 3e-6
	toy := newToyFlux(t, pairs, cfg, 2, 7)
	defer toy.close()
	toyLearns(t, toy.tr, toy.loader, toy.bb.PolicyParams,
		func() map[string]Fingerprint { return fluxFrozenFingerprints(t, toy.bb, p) }, 2, 2)
}

// TestSetOptimizer: a replacement optimizer must update the policy's
// weights in their order (one over a part of them is refused, and the old
// one stays); an accepted one gets the schedule's rate at the trainer's
// step and takes the steps.
func TestSetOptimizer(t *testing.T) {
	tinyFluxPipeline(t) // shared by the tests: loaded before counting
	testutil.NoLeak(t)
	pairs := writeToyPairs(t, t.TempDir(), 1, 2, 1, 32)
	cfg := DefaultTrainConfig()
	cfg.Schedule = optim.ScheduleConfig{Name: "linear", WarmupSteps: 0, TotalSteps: 4}
	toy := newToyFlux(t, pairs, cfg, 1, 3)
	defer toy.close()
	before := toy.tr.Opt
	err := toy.tr.SetOptimizer(func(ps []optim.Param, c optim.AdamWConfig) (optim.Optimizer, error) {
		return optim.NewAdamW(ps[1:], c)
	})
	if err == nil || toy.tr.Opt != before {
		t.Fatalf("an optimizer over all weights but one: %v (replaced: %v), want an error and the old one kept", err, toy.tr.Opt != before)
	}
	toy.tr.StepsDone = 2 // as a resumed run
	var built optim.Optimizer
	err = toy.tr.SetOptimizer(func(ps []optim.Param, c optim.AdamWConfig) (optim.Optimizer, error) {
		if c != cfg.AdamW {
			t.Errorf("SetOptimizer passed %+v, want the trainer's %+v", c, cfg.AdamW)
		}
		o, err := optim.NewSGD(ps, optim.SGDConfig{LR: c.LR})
		built = o
		return o, err
	})
	if err != nil || toy.tr.Opt != built {
		t.Fatalf("SetOptimizer: %v (replaced: %v)", err, toy.tr.Opt == built)
	}
	sched, err := optim.NewSchedule(cfg.Schedule)
	if err != nil {
		t.Fatal(err)
	}
	if want := cfg.AdamW.LR * sched(2); toy.tr.Opt.LR() != want {
		t.Errorf("learning rate after SetOptimizer at step 2: %g, want the schedule's %g", toy.tr.Opt.LR(), want)
	}
	b, err := toy.loader.Next()
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if _, err := toy.tr.Step([]*Batch{b}); err != nil {
		t.Fatal(err)
	}
	if toy.tr.StepsDone != 3 {
		t.Errorf("StepsDone %d after a step from 2", toy.tr.StepsDone)
	}
}
