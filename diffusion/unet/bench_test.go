package unet

import (
	"fmt"
	"math"
	"os"
	"strconv"
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
// scripts/bench_sd2_step.py times the same step with diffusers on the same
// libtorch.
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

// BenchmarkUNetFullSize times one full-size SD2-base sampling step:
// ControlNet + UNet with random weights, batch 2 (the CFG batch). On CUDA:
// float16 at 512×512 (64×64 latents), reporting the peak CUDA memory too;
// on the CPU: float32 at $DP2O_BENCH_SIZE pixels (default 256), reporting
// process CPU time beside wall time. It runs only with DP2O_BENCH_FULL=1.
// scripts/bench_sd2_step.py --full times the same step with diffusers.
func BenchmarkUNetFullSize(b *testing.B) {
	if os.Getenv("DP2O_BENCH_FULL") != "1" {
		b.Skip("set DP2O_BENCH_FULL=1 to run the full-size benchmark")
	}
	dev := testutil.Device(b)
	if dev.IsCUDA() && dev.Index < 0 {
		dev.Index = 0
	}
	dtype, size := torch.Float16, int64(512)
	if !dev.IsCUDA() {
		dtype, size = torch.Float32, 256
	}
	if v := os.Getenv("DP2O_BENCH_SIZE"); v != "" {
		n, err := strconv.ParseInt(v, 10, 64)
		require.NoError(b, err)
		require.Zero(b, n%8, "DP2O_BENCH_SIZE must be a multiple of 8")
		size = n
	}
	gen := torch.MustGenerator(dev, 0)

	cfg := SD2BaseConfig()
	bu := nn.NewBuilder(nil, dtype, dev)
	u, err := New(bu, cfg)
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
	lat := size / 8
	sample := torch.Randn([]int64{2, int64(cfg.InChannels), lat, lat}, gen, dtype, dev)
	ts := torch.FromSlice([]int64{500, 500}).ToDevice(dev)
	text := torch.Randn([]int64{2, 77, int64(cfg.CrossAttentionDim[0])}, gen, dtype, dev)
	cond := torch.Rand([]int64{2, 3, size, size}, gen, dtype, dev)

	torch.NoGrad(func() {
		step := func() *torch.Tensor {
			r := cn.Forward(sample, ts, text, cond, 1)
			defer r.Close()
			return u.Forward(sample, ts, text, r)
		}
		warm := 2
		if !dev.IsCUDA() {
			warm = 1
		}
		for range warm {
			step().Close()
		}
		if dev.IsCUDA() {
			require.NoError(b, torch.CUDASynchronize(dev.Index))
			require.NoError(b, torch.CUDAResetPeak(dev.Index))
		}
		b.ResetTimer()
		start, cpu := time.Now(), testutil.CPUTime()
		var out *torch.Tensor
		for i := range b.N {
			if i > 0 {
				out.Close()
			}
			out = step()
		}
		if dev.IsCUDA() {
			require.NoError(b, torch.CUDASynchronize(dev.Index))
		}
		elapsed, cpuElapsed := time.Since(start), testutil.CPUTime()-cpu
		b.StopTimer()
		defer out.Close()
		finite := out.Isfinite().All()
		b.ReportMetric(float64(elapsed.Microseconds())/1000/float64(b.N), "ms/step")
		if dev.IsCUDA() {
			_, peak, _, err := torch.CUDAMemory(dev.Index)
			require.NoError(b, err)
			b.ReportMetric(float64(peak)/(1<<20), "peak-MiB")
		} else {
			b.ReportMetric(float64(cpuElapsed.Microseconds())/1000/float64(b.N), "cpu-ms/step")
		}
		b.Logf("%d×%d %v, output %v finite: %v; libtorch %s, threads %d, BLAS %s",
			size, size, dtype, out.Shape(), finite, torch.Version(), torch.NumThreads(), torch.BLASLibrary())
	})
}
