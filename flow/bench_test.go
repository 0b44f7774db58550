package flow

import (
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/dp2osr/dp2o/flow/scheduler"
	"github.com/dp2osr/dp2o/internal/testutil"
	"github.com/dp2osr/dp2o/torch"
)

// BenchmarkPipelineStep times one denoising step of the fixture pipeline
// (ControlNet forward, transformer forward with the residuals, Euler
// update) on the tiny fixture models and the inputs of the reference run's
// step 0, with one libtorch thread and with the default count. Compare
// with scripts/bench_flux_pipeline_step.py (diffusers on the same
// libtorch).
func BenchmarkPipelineStep(b *testing.B) {
	r := readReport(b)
	dev := testutil.Device(b)
	p := loadTiny(b, dev)
	ref := testutil.Tensors(b, testutil.Fixture(b, "flux/pipeline/io.safetensors"))
	s := torch.NewScope()
	defer s.Close()
	emb, err := NewPromptEmbeds(ref["prompt_embeds"].ToDevice(dev), ref["pooled_prompt_embeds"].ToDevice(dev))
	require.NoError(b, err)
	defer emb.Close()
	latents := ref["step.0.latents_in"].ToDevice(dev)
	cond := ref["control_latents_packed"].ToDevice(dev)
	imgIDs := ref["latent_image_ids"].ToDevice(dev)
	sched, err := p.Scheduler.PipelineSchedule(r.Steps, int(latents.Size(1)))
	require.NoError(b, err)
	o := DefaultSampleOptions()
	o.GuidanceScale, o.ConditioningScale = r.GuidanceScale, r.ConditioningScale

	defThreads := torch.NumThreads()
	defer torch.SetNumThreads(defThreads)
	for _, th := range []struct {
		name string
		n    int
	}{{"threads=1", 1}, {fmt.Sprintf("threads=%d(default)", defThreads), defThreads}} {
		b.Run(th.name, func(b *testing.B) {
			torch.SetNumThreads(th.n)
			torch.NoGrad(func() {
				step := func() {
					st := scheduler.NewStepper(sched)
					next, err := p.step(st, 0, sched.Timesteps[0], latents, cond, emb.Prompt, emb.Pooled, emb.TextIDs, imgIDs, o)
					if err != nil {
						b.Fatal(err)
					}
					next.Close()
				}
				step() // warm-up
				b.ResetTimer()
				cpu0 := testutil.CPUTime()
				start := time.Now()
				for range b.N {
					step()
				}
				if dev.IsCUDA() {
					require.NoError(b, torch.CUDASynchronize(dev.Index))
				}
				b.ReportMetric(float64(time.Since(start).Microseconds())/1000/float64(b.N), "ms/step")
				b.ReportMetric(float64((testutil.CPUTime()-cpu0).Microseconds())/1000/float64(b.N), "cpu-ms/step")
			})
		})
	}
}
