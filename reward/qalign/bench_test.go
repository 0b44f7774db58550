package qalign

import (
	"context"
	"testing"

	"github.com/dp2osr/dp2o/internal/testutil"
	"github.com/dp2osr/dp2o/reward/internal/iqatest"
)

// BenchmarkScore scores the first fixture case with the tiny fixture model
// (real image size, patch grid, query count and prompt length; small
// widths and depths) on the CPU: DP2O_BENCH_BATCH images per call (default
// 1), DP2O_BENCH_THREADS libtorch threads (default 1). It reports images
// per second.
func BenchmarkScore(b *testing.B) {
	n := iqatest.BenchEnv(b)
	f := iqatest.Load(b, folder)
	s := scorer(b, f)
	x, _ := input(b, f.Cases[0], f.Images(b))
	img := iqatest.Repeat(b, x, n, testutil.Device(b))
	ctx := context.Background()
	if _, err := s.Score(ctx, img, nil); err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := s.Score(ctx, img, nil); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(n)*float64(b.N)/b.Elapsed().Seconds(), "images/s")
}

// BenchmarkPreprocess is the uint8 / pad / PIL resize / normalise chain
// alone for the same image.
func BenchmarkPreprocess(b *testing.B) {
	f := iqatest.Load(b, folder)
	x, _ := input(b, f.Cases[0], f.Images(b))
	p := fixtureProcessor(b, f)
	for i := 0; i < b.N; i++ {
		pv, err := p.Preprocess(x)
		if err != nil {
			b.Fatal(err)
		}
		pv.Close()
	}
}
