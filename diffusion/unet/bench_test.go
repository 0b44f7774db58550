package unet

import (
	"fmt"
	"math"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/dp2osr/dp2o/internal/testutil"
	"github.com/dp2osr/dp2o/torch"
	"github.com/dp2osr/dp2o/torch/nn"
)

// BenchmarkUNetControlNetStep times one sampling step of the tiny fixture
// models (ControlNet forward, then UNet forward with its residuals) at the
// fixture's shapes (batch 2, latents 16×16, control 128×128), without
// autograd, with one libtorch thread and with the default count.
// testdata/bench_step.py times the same step in PyTorch on the same libtorch.
func BenchmarkUNetControlNetStep(b *testing.B) {
	dev := testutil.Device(b)
	u, err := Load(testutil.Fixture(b, "sd2/unet"), torch.Float32, dev)
	require.NoError(b, err)
	defer u.Close()
	cn := loadFixtureControlNet(b, "diffusers", dev)
	defer cn.Close()
	io := testutil.Tensors(b, testutil.Fixture(b, "sd2/controlnet/io.safetensors"))
	s := torch.NewScope()
	defer s.Close()
	sample, ts, text := io["sample"].ToDevice(dev), io["timesteps"].ToDevice(dev), io["encoder_hidden_states"].ToDevice(dev)
	cond := io["controlnet_cond_u8"].To(torch.Float32).DivScalar(255).ToDevice(dev)

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
					r := cn.Forward(sample, ts, text, cond, 1)
					out := u.Forward(sample, ts, text, r)
					out.Close()
					r.Close()
				}
				step() // warm-up
				b.ResetTimer()
				start, cpu := time.Now(), testutil.CPUTime()
				for range b.N {
					step()
				}
				if dev.IsCUDA() {
					require.NoError(b, torch.CUDASynchronize(dev.Index))
				}
				b.ReportMetric(float64(time.Since(start).Microseconds())/1000/float64(b.N), "ms/step")
				b.ReportMetric(float64((testutil.CPUTime()-cpu).Microseconds())/1000/float64(b.N), "cpu-ms/step")
			})
		})
	}
}

// randomInit gives a model's weights random values of a sensible scale
// (norm weights 1; matrices and kernels U(±1/√fan_in); biases U(±0.02)),
// drawn from gen, so that a full-size benchmark computes on realistic
// numbers rather than zeros.
func randomInit(params []Param, gen *torch.Generator) {
	torch.NoGrad(func() {
		for _, p := range params {
			sh := p.Tensor.Shape()
			switch {
			case len(sh) >= 2:
				bound := 1 / math.Sqrt(float64(p.Tensor.Numel()/sh[0]))
				p.Tensor.Uniform_(-bound, bound, gen)
			case strings.HasSuffix(p.Name, ".weight"):
				p.Tensor.Fill_(1)
			default:
				p.Tensor.Uniform_(-0.02, 0.02, gen)
			}
		}
	})
}

// BenchmarkUNetFullSize times one full-size SD2-base sampling step on CUDA:
// ControlNet + UNet with random weights, float16, batch 2 (the CFG batch),
// 512×512 images (64×64 latents), reporting ms/step and the peak CUDA
// memory. It runs only with DP2O_BENCH_FULL=1 and DP2O_DEVICE=cuda.
func BenchmarkUNetFullSize(b *testing.B) {
	if os.Getenv("DP2O_BENCH_FULL") != "1" {
		b.Skip("set DP2O_BENCH_FULL=1 (and DP2O_DEVICE=cuda) to run the full-size benchmark")
	}
	dev := testutil.Device(b)
	if !dev.IsCUDA() {
		b.Skip("the full-size benchmark needs DP2O_DEVICE=cuda")
	}
	if dev.Index < 0 {
		dev.Index = 0
	}
	const dtype = torch.Float16
	gen := torch.MustGenerator(dev, 0)

	bu := nn.NewBuilder(nil, dtype, dev)
	u, err := New(bu, SD2BaseConfig())
	require.NoError(b, err)
	u.Params, err = bu.Finish()
	require.NoError(b, err)
	defer u.Close()
	randomInit(u.Parameters(), gen)
	bc := nn.NewBuilder(nil, dtype, dev)
	cn, err := FromUNet(u, bc, ControlNetOptions{})
	require.NoError(b, err)
	cn.Params, err = bc.Finish()
	require.NoError(b, err)
	defer cn.Close()
	randomInit(cn.Parameters(), gen)

	s := torch.NewScope()
	defer s.Close()
	sample := torch.Randn([]int64{2, 4, 64, 64}, gen, dtype, dev)
	ts := torch.FromSlice([]int64{500, 500}).ToDevice(dev)
	text := torch.Randn([]int64{2, 77, 1024}, gen, dtype, dev)
	cond := torch.Rand([]int64{2, 3, 512, 512}, gen, dtype, dev)

	torch.NoGrad(func() {
		step := func() *torch.Tensor {
			r := cn.Forward(sample, ts, text, cond, 1)
			defer r.Close()
			return u.Forward(sample, ts, text, r)
		}
		for range 2 { // warm-up
			step().Close()
		}
		require.NoError(b, torch.CUDASynchronize(dev.Index))
		require.NoError(b, torch.CUDAResetPeak(dev.Index))
		b.ResetTimer()
		start := time.Now()
		var out *torch.Tensor
		for i := range b.N {
			if i > 0 {
				out.Close()
			}
			out = step()
		}
		require.NoError(b, torch.CUDASynchronize(dev.Index))
		elapsed := time.Since(start)
		b.StopTimer()
		defer out.Close()
		_, peak, _, err := torch.CUDAMemory(dev.Index)
		require.NoError(b, err)
		finite := out.Isfinite().All()
		b.ReportMetric(float64(elapsed.Microseconds())/1000/float64(b.N), "ms/step")
		b.ReportMetric(float64(peak)/(1<<20), "peak-MiB")
		b.Logf("output %v finite: %v; libtorch %s, fused attention: %v", out.Shape(), finite, torch.Version(), torch.HasNativeSDPA())
	})
}
