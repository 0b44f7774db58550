package transformer

import (
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/dp2osr/dp2o/internal/testutil"
	"github.com/dp2osr/dp2o/torch"
	"github.com/dp2osr/dp2o/torch/detinit"
	"github.com/dp2osr/dp2o/torch/nn"
)

// The benchmark's model and inputs; scripts/bench_flux.py builds the same
// in diffusers (same weights and inputs: both draw from libtorch's CPU
// generator in the same order).
const (
	benchDouble, benchSingle = 2, 2 // transformer blocks kept
	benchControlLayers       = 2    // ControlNet double blocks (no single blocks, as C-FLUX)
	benchImage               = 512  // image side in pixels
	benchTextTokens          = 512  // T5 max_sequence_length
	benchWeightSeed          = 1234 // detinit seed of the transformer weights
	benchInputSeed           = 5678 // generator seed of the inputs
	benchSigma, benchGuide   = 1.0, 2.5
)

// benchModels builds the full-width FLUX.1-dev transformer (config of
// flux/keys/flux_transformer) truncated to benchDouble + benchSingle
// blocks with deterministic weights, and a ControlNet from it as
// from_transformer does.
func benchModels(b *testing.B) (*Flux, *ControlNet) {
	cfg, err := LoadConfig(testutil.Fixture(b, "flux/keys/flux_transformer/config.json"))
	require.NoError(b, err)
	cfg.NumLayers, cfg.NumSingleLayers = benchDouble, benchSingle
	return detinitModels(b, cfg, benchControlLayers, torch.CPU)
}

// detinitModels builds the transformer of cfg with deterministic weights
// (detinit, benchWeightSeed) on dev, float32, and a ControlNet of
// controlLayers double blocks from it as from_transformer does: what the
// Python benchmark scripts build with the same weights.
func detinitModels(b *testing.B, cfg Config, controlLayers int, dev torch.Device) (*Flux, *ControlNet) {
	meta := nn.NewBuilder(nil, torch.Float32, torch.Meta)
	_, err := New(meta, cfg)
	require.NoError(b, err)
	manifest := map[string]detinit.Spec{}
	for k, sh := range meta.Requested() {
		manifest[k] = detinit.Spec{Shape: sh, DType: torch.Float32}
	}
	meta.Params().Close()
	src, err := detinit.Build(manifest, benchWeightSeed, dev)
	require.NoError(b, err)
	defer src.Close() // the model holds its own handles
	f, err := FromSource(src, cfg, torch.Float32, dev)
	require.NoError(b, err)
	cn, err := ControlNetFromTransformer(f, ControlNetOptions{NumLayers: controlLayers})
	require.NoError(b, err)
	return f, cn
}

// cpuTime is the user + system CPU time of the process so far.
func cpuTime() time.Duration {
	u, s := cpuTimes()
	return u + s
}

// cpuTimes is the user and system CPU time of the process so far.
func cpuTimes() (user, sys time.Duration) {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0, 0
	}
	return time.Duration(ru.Utime.Nano()), time.Duration(ru.Stime.Nano())
}

// minorFaults is the number of minor page faults of the process so far.
func minorFaults() int64 {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return ru.Minflt
}

// benchInputs draws the inputs in scripts/bench_flux.py's order.
func benchInputs(b *testing.B, c Config) (Input, *torch.Tensor) {
	return drawInputs(b, c, 1, benchImage, benchTextTokens, benchSigma, benchGuide, torch.CPU)
}

// drawInputs draws batch samples of image² pixels with text tokens from a
// CPU generator seeded benchInputSeed, in the order the Python benchmark
// scripts draw them (latents, control latents, text, pooled), on dev;
// every sample gets timestep sigma and guidance guide.
func drawInputs(b *testing.B, c Config, batch, image, text int64, sigma, guide float64, dev torch.Device) (Input, *torch.Tensor) {
	gen, err := torch.NewGenerator(torch.CPU, benchInputSeed)
	require.NoError(b, err)
	draw := func(shape ...int64) *torch.Tensor {
		return torch.Randn(shape, gen, torch.Float32, torch.CPU).ToDevice(dev)
	}
	grid := image / 16
	l := grid * grid
	x := draw(batch, l, int64(c.InChannels))
	cond := draw(batch, l, int64(c.InChannels))
	enc := draw(batch, text, int64(c.JointAttentionDim))
	pooled := draw(batch, int64(c.PooledProjectionDim))
	img, err := ImageIDs(grid, grid, torch.Float32, dev)
	require.NoError(b, err)
	txt, err := TextIDs(text, torch.Float32, dev)
	require.NoError(b, err)
	return Input{
		HiddenStates: x, EncoderHiddenStates: enc, PooledProjections: pooled,
		Timestep: torch.Full([]int64{batch}, sigma, torch.Float32, dev), Guidance: torch.Full([]int64{batch}, guide, torch.Float32, dev),
		ImgIDs: img, TxtIDs: txt,
	}, cond
}

// BenchmarkFluxControlNetStep times one sampling step at 512² — ControlNet
// forward, then the transformer with its residuals — of a full-width FLUX.1
// transformer truncated to 2 double + 2 single blocks with a 2-block
// ControlNet, float32 on the CPU, one libtorch thread, no autograd. It
// reports wall and process CPU time per step (on a shared machine the wall
// time is mostly waiting for a core). Building the weights takes a while;
// run it once, with OpenBLAS on one thread too (libtorch does not set
// OpenBLAS's own thread count, which defaults to the number of cores):
//
//	OPENBLAS_NUM_THREADS=1 go test ./flow/transformer -run '^$' -bench FluxControlNetStep -benchtime 1x
//
// and scripts/bench_flux.py for diffusers on the same libtorch. It logs the
// output's mean |v| and sum, which the script prints too (the same model
// and inputs: they agree to float32 rounding).
func BenchmarkFluxControlNetStep(b *testing.B) {
	threads := testutil.EnvInt(b, "DP2O_BENCH_THREADS", 1)
	defer torch.SetNumThreads(torch.NumThreads())
	torch.SetNumThreads(threads)
	f, cn := benchModels(b)
	defer f.Close()
	defer cn.Close()
	s := torch.NewScope()
	defer s.Close()
	in, cond := benchInputs(b, f.Config)
	var out *torch.Tensor
	torch.NoGrad(func() {
		step := func() {
			if out != nil {
				out.Close()
			}
			blocks, _, err := cn.Forward(in, cond, 1)
			require.NoError(b, err)
			in.ControlNetBlockSamples = blocks
			out, err = f.Forward(in)
			require.NoError(b, err)
			for _, t := range blocks {
				t.Close()
			}
		}
		b.ResetTimer()
		start, cpu0 := time.Now(), cpuTime()
		u0, s0 := cpuTimes()
		f0 := minorFaults()
		for range b.N {
			step()
		}
		u1, s1 := cpuTimes()
		b.Logf("per step: user %v, system %v, minor page faults %d", (u1-u0)/time.Duration(b.N), (s1-s0)/time.Duration(b.N),
			(minorFaults()-f0)/int64(b.N))
		b.ReportMetric(float64(time.Since(start).Microseconds())/1000/float64(b.N), "ms/step")
		// CPU time of the process: on a shared machine the wall time
		// includes waiting for a core.
		b.ReportMetric(float64((cpuTime()-cpu0).Microseconds())/1000/float64(b.N), "cpu-ms/step")
	})
	b.StopTimer()
	b.Logf("threads=%d output %v mean|v| %.6f sum %.6f", threads, out.Shape(), out.Abs().Mean().Item(), out.Sum().Item())
}
