package transformer

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/dp2osr/dp2o/internal/testutil"
	"github.com/dp2osr/dp2o/torch"
)

// BenchmarkTrainStepMemory measures one training step of a C-FLUX ControlNet
// through the frozen transformer (forward of both, mean(v²) backward into the
// ControlNet), with and without gradient checkpointing, each in a fresh
// process (freed memory stays with the C allocator, so a second
// configuration in the same process would reuse the first one's peak): the
// peak memory of the step above what the process held before it (CPU: the
// resident set's peak, VmHWM; CUDA: the caching allocator's peak), and the
// CPU and wall time of the step. The model is FLUX.1-dev's configuration
// (flux/keys/flux_transformer) narrowed to DP2O_BENCH_HEADS heads of 128
// (default 8: width 1024), with DP2O_BENCH_DOUBLE + DP2O_BENCH_SINGLE
// transformer blocks (4 + 4) and a 2-block ControlNet from it, deterministic
// weights; DP2O_BENCH_BATCH samples (2: a DPO pair's winner and loser) of
// DP2O_BENCH_IMAGE² pixels (512) with DP2O_BENCH_TEXT text tokens (256).
// scripts/bench_flux_train_step.py runs the same step in diffusers (plain,
// and with enable_gradient_checkpointing), on the same libtorch and
// weights; both print the loss:
//
//	OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1 go test ./flow/transformer -run '^$' -bench TrainStepMemory -benchtime 1x
func BenchmarkTrainStepMemory(b *testing.B) {
	if v := os.Getenv(trainStepChildEnv); v != "" {
		trainStepChild(b, v == "checkpointed")
		return
	}
	for _, name := range []string{"plain", "checkpointed"} {
		b.Run(name, func(b *testing.B) {
			var peak int64
			var cpu, wall float64
			for range b.N {
				out := filepath.Join(b.TempDir(), "result.json")
				cmd := exec.Command(os.Args[0], "-test.run=^$", "-test.bench=^BenchmarkTrainStepMemory$", "-test.benchtime=1x")
				cmd.Env = append(os.Environ(), trainStepChildEnv+"="+name, trainStepOutEnv+"="+out)
				msg, err := cmd.CombinedOutput()
				require.NoError(b, err, "%s", msg)
				data, err := os.ReadFile(out)
				require.NoError(b, err, "%s", msg)
				var r trainStepResult
				require.NoError(b, json.Unmarshal(data, &r))
				b.Logf("%s: loss %.6f", r.Setup, r.Loss)
				peak = max(peak, r.PeakBytes)
				cpu += r.CPUMillis
				wall += r.WallMillis
			}
			b.ReportMetric(float64(peak)/(1<<20), "peak-MiB")
			b.ReportMetric(cpu/float64(b.N), "cpu-ms/step")
			b.ReportMetric(wall/float64(b.N), "wall-ms/step")
		})
	}
}

const (
	// trainStepSigma and trainStepGuidance are every sample's timestep and
	// guidance (scripts/bench_flux_train_step.py uses the same).
	trainStepSigma, trainStepGuidance = 0.5, 3.5

	trainStepChildEnv = "DP2O_BENCH_TRAIN_STEP"     // plain or checkpointed: run one step, in this process
	trainStepOutEnv   = "DP2O_BENCH_TRAIN_STEP_OUT" // where the child writes its trainStepResult
)

// trainStepResult is what a BenchmarkTrainStepMemory child measured.
type trainStepResult struct {
	Setup      string
	Loss       float64 // mean(v²), as scripts/bench_flux_train_step.py prints it
	PeakBytes  int64
	CPUMillis  float64
	WallMillis float64
}

// trainStepChild builds the model and runs one step, measured, in this
// process, and writes a trainStepResult to $DP2O_BENCH_TRAIN_STEP_OUT.
func trainStepChild(b *testing.B, ckpt bool) {
	dev := testutil.Device(b)
	cfg, err := LoadConfig(testutil.Fixture(b, "flux/keys/flux_transformer/config.json"))
	require.NoError(b, err)
	cfg.NumAttentionHeads = testutil.EnvInt(b, "DP2O_BENCH_HEADS", 8)
	cfg.NumLayers = testutil.EnvInt(b, "DP2O_BENCH_DOUBLE", 4)
	cfg.NumSingleLayers = testutil.EnvInt(b, "DP2O_BENCH_SINGLE", 4)
	batch := int64(testutil.EnvInt(b, "DP2O_BENCH_BATCH", 2))
	image := int64(testutil.EnvInt(b, "DP2O_BENCH_IMAGE", 512))
	text := int64(testutil.EnvInt(b, "DP2O_BENCH_TEXT", 256))

	f, cn := detinitModels(b, cfg, benchControlLayers, dev)
	defer f.Close()
	defer cn.Close()
	for _, p := range f.Parameters() {
		p.Tensor.SetRequiresGrad(false)
	}
	for _, p := range cn.Parameters() {
		p.Tensor.SetRequiresGrad(true)
	}

	s := torch.NewScope()
	defer s.Close()
	in, cond := drawInputs(b, cfg, batch, image, text, trainStepSigma, trainStepGuidance, dev)
	l := in.HiddenStates.Size(1)
	setup := fmt.Sprintf("width %d, %d+%d blocks, ControlNet %d blocks, batch %d, %d image + %d text tokens, %s",
		cfg.InnerDim(), cfg.NumLayers, cfg.NumSingleLayers, benchControlLayers, batch, l, text, dev)

	var loss float64
	step := func() {
		torch.EnableGrad(func() {
			ss := torch.NewScope()
			defer ss.Close()
			blocks, singles, err := cn.Forward(in, cond, 1)
			require.NoError(b, err)
			in2 := in
			in2.ControlNetBlockSamples, in2.ControlNetSingleBlockSamples = blocks, singles
			out, err := f.Forward(in2)
			require.NoError(b, err)
			l := out.Square().Mean()
			l.Backward(nil)
			loss = l.Item()
		})
		for _, p := range cn.Parameters() {
			p.Tensor.ZeroGrad(true)
		}
		if dev.IsCUDA() {
			require.NoError(b, torch.CUDASynchronize(dev.Index))
		}
	}
	f.GradientCheckpointing, cn.GradientCheckpointing = ckpt, ckpt
	runtime.GC()
	testutil.ReleaseMemory()
	var base int64
	if dev.IsCUDA() {
		require.NoError(b, torch.CUDAResetPeak(dev.Index))
		base, _, _, err = torch.CUDAMemory(dev.Index)
		require.NoError(b, err)
	} else {
		require.NoError(b, os.WriteFile("/proc/self/clear_refs", []byte("5"), 0))
		base = testutil.ProcStatus(b)["VmRSS"]
	}
	c0, t0 := testutil.CPUTime(), time.Now()
	step()
	res := trainStepResult{
		Setup:      setup,
		Loss:       loss,
		CPUMillis:  float64((testutil.CPUTime() - c0).Microseconds()) / 1e3,
		WallMillis: float64(time.Since(t0).Microseconds()) / 1e3,
	}
	var top int64
	if dev.IsCUDA() {
		_, top, _, err = torch.CUDAMemory(dev.Index)
		require.NoError(b, err)
	} else {
		top = testutil.ProcStatus(b)["VmHWM"]
	}
	res.PeakBytes = top - base
	data, err := json.Marshal(res)
	require.NoError(b, err)
	require.NoError(b, os.WriteFile(os.Getenv(trainStepOutEnv), data, 0o644))
}
