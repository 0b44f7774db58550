package t5

import (
	"fmt"
	"math"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/dp2osr/dp2o/internal/testutil"
	"github.com/dp2osr/dp2o/torch"
	"github.com/dp2osr/dp2o/torch/nn"
)

// BenchmarkEncoder times the fixture's tiny encoder on each input case of
// io.safetensors (last_hidden_state only, no autograd), with one libtorch
// thread and with the default count. scripts/bench_t5_encoder.py times the
// same computation in PyTorch on the same libtorch.
func BenchmarkEncoder(b *testing.B) {
	dev := testutil.Device(b)
	e := loadTiny(b, dev)
	io := testutil.Tensors(b, testutil.Fixture(b, encoderDir+"/io.safetensors"))
	cases := encoderCases(io)
	var names []string
	for name, c := range cases {
		if c["input_ids"] != nil {
			names = append(names, name)
		}
	}
	sort.Strings(names)
	defThreads := torch.NumThreads()
	defer torch.SetNumThreads(defThreads)
	for _, name := range names {
		ids := cases[name]["input_ids"]
		threads := []int{1}
		if defThreads != 1 {
			threads = append(threads, defThreads)
		}
		for _, th := range threads {
			b.Run(fmt.Sprintf("%s/%v/threads=%d", name, ids.Shape(), th), func(b *testing.B) {
				torch.SetNumThreads(th)
				torch.NoGrad(func() {
					run := func() {
						h, err := e.Forward(ids)
						require.NoError(b, err)
						h.Close()
					}
					run() // warm-up
					b.ResetTimer()
					start, cpu := time.Now(), testutil.CPUTime()
					for range b.N {
						run()
					}
					if dev.IsCUDA() {
						require.NoError(b, torch.CUDASynchronize(dev.Index))
					}
					b.ReportMetric(float64(time.Since(start).Microseconds())/1000/float64(b.N), "ms/op")
					b.ReportMetric(float64((testutil.CPUTime()-cpu).Microseconds())/1000/float64(b.N), "cpu-ms/op")
				})
			})
		}
	}
}

// BenchmarkTokenizer times encoding every prompt of the tokenizer fixture
// to FLUX's 512 ids.
func BenchmarkTokenizer(b *testing.B) {
	tok := tokenizers(b)["folder"]
	c := readTokenizerCases(b)
	var texts []string
	for _, tc := range c.Cases {
		texts = append(texts, tc.Text)
	}
	b.ResetTimer()
	for range b.N {
		if _, err := tok.Encode(texts, DefaultMaxLength); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.Elapsed().Microseconds())/float64(b.N*len(texts)), "µs/prompt")
}

// BenchmarkEncoderFullSize times FLUX's T5-XXL (the published config of
// the keys fixture) with random weights in bfloat16 on CUDA at FLUX's
// (1, 512) input, reporting ms per forward, the peak CUDA memory and the
// achieved TFLOP/s. It runs only with DP2O_BENCH_FULL=1 and
// DP2O_DEVICE=cuda.
func BenchmarkEncoderFullSize(b *testing.B) {
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
	cfg, err := LoadConfig(filepath.Join(testutil.Fixture(b, "flux/keys/t5_xxl_encoder"), "config.json"))
	require.NoError(b, err)
	bld := nn.NewBuilder(nil, torch.BFloat16, dev)
	e, err := NewEncoder(bld, cfg)
	require.NoError(b, err)
	e.Params, err = bld.Finish()
	require.NoError(b, err)
	defer e.Close()
	gen := torch.MustGenerator(dev, 0)
	torch.NoGrad(func() {
		for _, name := range e.Params.Names {
			w := e.Params.Get(name)
			sh := w.Shape()
			switch {
			case strings.HasSuffix(name, "layer_norm.weight"):
				w.Fill_(1)
			case name == SharedKey:
				w.Uniform_(-1, 1, gen)
			default:
				bound := 1 / math.Sqrt(float64(sh[len(sh)-1]))
				w.Uniform_(-bound, bound, gen)
			}
		}
	})
	const seq = DefaultMaxLength
	s := torch.NewScope()
	defer s.Close()
	ids := torch.Randint(0, int64(cfg.VocabSize), []int64{1, seq}, gen, torch.Int64, dev)
	torch.NoGrad(func() {
		for range 2 {
			h, err := e.Forward(ids)
			require.NoError(b, err)
			h.Close()
		}
		require.NoError(b, torch.CUDASynchronize(dev.Index))
		require.NoError(b, torch.CUDAResetPeak(dev.Index))
		b.ResetTimer()
		start := time.Now()
		for range b.N {
			h, err := e.Forward(ids)
			require.NoError(b, err)
			h.Close()
		}
		require.NoError(b, torch.CUDASynchronize(dev.Index))
		ms := float64(time.Since(start).Microseconds()) / 1000 / float64(b.N)
		_, peak, _, err := torch.CUDAMemory(dev.Index)
		require.NoError(b, err)
		// Matmul FLOPs: per layer 4 projections d×inner, the gated FF 3·d×ff,
		// and the two attention products.
		d, inner, ff, l := float64(cfg.DModel), float64(cfg.InnerDim()), float64(cfg.DFF), float64(seq)
		flops := float64(cfg.NumLayers) * (2*l*(4*d*inner+3*d*ff) + 2*2*l*l*inner)
		b.ReportMetric(ms, "ms/op")
		b.ReportMetric(float64(peak)/(1<<30), "peak-GiB")
		b.ReportMetric(flops/(ms/1000)/1e12, "TFLOP/s")
	})
}
