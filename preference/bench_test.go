package preference

import (
	"testing"
	"time"

	"github.com/dp2osr/dp2o/internal/testutil"
	"github.com/dp2osr/dp2o/torch"
)

// benchDPOStep times one full DPO optimiser step (noising, policy forward
// with autograd, reference forward without, weighted DPO loss, backward,
// clipping, AdamW) with the fixture's tiny models on step 0's inputs of the
// train fixture, one intra-op thread. scripts/bench_dpo_step.py times the
// same step with diffusers' models on the same files:
//
//	OPENBLAS_NUM_THREADS=1 go test ./preference -run '^$' -bench DPOStep
//	OPENBLAS_NUM_THREADS=1 PYTHONPATH=<refenv> HF_HUB_OFFLINE=1 /usr/bin/python3 scripts/bench_dpo_step.py
func benchDPOStep(b *testing.B, r trainRun) {
	prev := torch.NumThreads()
	torch.SetNumThreads(1)
	defer torch.SetNumThreads(prev)
	var meta trainMeta
	readJSON(b, r.dir+"/train.json", &meta)
	in := testutil.Tensors(b, testutil.Fixture(b, r.dir+"/inputs.safetensors"))
	bb := r.backbone(b)
	defer bb.Close()
	cfg := DefaultTrainConfig()
	cfg.Beta = meta.DPOBeta
	cfg.AdamW.LR = meta.Optimizer.LR
	tr, err := NewTrainer(bb, cfg)
	if err != nil {
		b.Fatal(err)
	}
	defer tr.Close()
	batch := r.batch(b, in, 0)
	defer batch.Close()
	if _, err := tr.Step([]*Batch{batch}); err != nil { // warm-up
		b.Fatal(err)
	}
	b.ResetTimer()
	start, cpu := time.Now(), testutil.CPUTime()
	for range b.N {
		if _, err := tr.Step([]*Batch{batch}); err != nil {
			b.Fatal(err)
		}
	}
	wall := time.Since(start).Seconds() / float64(b.N)
	b.ReportMetric(wall*1e3, "ms/step")
	b.ReportMetric(float64((testutil.CPUTime()-cpu).Microseconds())/1000/float64(b.N), "cpu-ms/step")
	b.ReportMetric(float64(batch.Pairs())/wall, "pairs/s")
}

func BenchmarkDPOStepSD2(b *testing.B) { benchDPOStep(b, sd2Run) }

func BenchmarkDPOStepFlux(b *testing.B) { benchDPOStep(b, fluxRun) }
