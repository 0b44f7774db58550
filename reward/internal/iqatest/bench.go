package iqatest

import (
	"os"
	"strconv"
	"testing"

	"github.com/dp2osr/dp2o/torch"
)

// BenchEnv reads the benchmark settings shared by the metric benchmarks
// and scripts/bench_iqa_models.py: DP2O_BENCH_BATCH (images per Score call,
// default 1) and DP2O_BENCH_THREADS (libtorch CPU threads, default 1, which
// it applies).
func BenchEnv(b *testing.B) (batch int64) {
	b.Helper()
	get := func(k string, def int) int {
		s := os.Getenv(k)
		if s == "" {
			return def
		}
		v, err := strconv.Atoi(s)
		if err != nil || v < 1 {
			b.Fatalf("%s=%q: want a positive integer", k, s)
		}
		return v
	}
	torch.SetNumThreads(get("DP2O_BENCH_THREADS", 1))
	return int64(get("DP2O_BENCH_BATCH", 1))
}

// Repeat returns img (1,3,H,W) repeated to a contiguous (n,3,H,W) batch on
// dev; the benchmark's cleanup frees it.
func Repeat(b *testing.B, img *torch.Tensor, n int64, dev torch.Device) *torch.Tensor {
	b.Helper()
	t := torch.Unscope(torch.Scoped(func() *torch.Tensor {
		return img.Expand([]int64{n, -1, -1, -1}).Contiguous().ToDevice(dev)
	}))
	b.Cleanup(t.Close)
	return t
}

// Expand returns img (1,3,H,W) expanded to (n,3,H,W) without a copy (batch
// stride 0: one reference for a group of candidates) on dev.
func Expand(b *testing.B, img *torch.Tensor, n int64, dev torch.Device) *torch.Tensor {
	b.Helper()
	t := torch.Unscope(torch.Scoped(func() *torch.Tensor {
		return img.ToDevice(dev).Expand([]int64{n, -1, -1, -1})
	}))
	b.Cleanup(t.Close)
	return t
}

// BenchScore times score on one batch of batch images (one warm-up call
// first) and reports images per second.
func BenchScore(b *testing.B, batch int64, score func() error) {
	b.Helper()
	if err := score(); err != nil { // warm-up
		b.Fatal(err)
	}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if err := score(); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(int64(b.N)*batch)/b.Elapsed().Seconds(), "images/s")
}
