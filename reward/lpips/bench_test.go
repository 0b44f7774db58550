package lpips

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"testing"

	"github.com/dp2osr/dp2o/internal/testutil"
	"github.com/dp2osr/dp2o/reward"
	"github.com/dp2osr/dp2o/reward/internal/iqatest"
	"github.com/dp2osr/dp2o/torch"
)

// BenchmarkLPIPS scores a batch of DP2O_BENCH_BATCH (default 4) images of
// the fixture's size against one reference, on the CPU with
// DP2O_BENCH_THREADS libtorch threads (default 1), and reports images per
// second (wall clock, and per CPU second of the process: steadier on a
// shared machine). "pairs": the reference repeated in memory (what pyiqa computes:
// the reference branch once per image); "group": the reference expanded
// (one reference for a group of candidates; its branch runs once).
// "exact" is the default path (pyiqa's kernels, bit for bit), "fast" the
// channels-last one (OpenOptions.Fast). scripts/bench_lpips.py times pyiqa's
// create_metric forward on the same batch and prints the ratios.
func BenchmarkLPIPS(b *testing.B) {
	threads := envInt(b, "DP2O_BENCH_THREADS", 1)
	batch := envInt(b, "DP2O_BENCH_BATCH", 4)
	torch.SetNumThreads(threads)
	for _, rel := range folders {
		f := iqatest.Load(b, rel)
		weights := f.Weights(b)
		images := f.Images(b)
		c := f.Cases[0]
		dist := torch.Unscope(images[c.Dist].Expand([]int64{int64(batch), -1, -1, -1}).Contiguous())
		ref1 := images[c.Ref]
		for _, path := range []string{"exact", "fast"} {
			s, err := reward.Open(f.PyiqaName, reward.OpenOptions{Source: weights, Fast: path == "fast"})
			if err != nil {
				b.Fatal(err)
			}
			for _, mode := range []string{"pairs", "group"} {
				ref := ref1.Expand([]int64{int64(batch), -1, -1, -1})
				if mode == "pairs" {
					ref = ref.Contiguous()
				}
				torch.Unscope(ref)
				name := fmt.Sprintf("metric=%s/path=%s/mode=%s/batch=%d/threads=%d/size=%dx%d", filepath.Base(rel), path, mode, batch, threads, c.Shape[3], c.Shape[2])
				b.Run(name, func(b *testing.B) {
					cpu0 := testutil.CPUTime().Seconds()
					for b.Loop() {
						if _, err := s.Score(context.Background(), dist, ref); err != nil {
							b.Fatal(err)
						}
					}
					b.ReportMetric(float64(b.N*batch)/b.Elapsed().Seconds(), "images/s")
					b.ReportMetric(float64(b.N*batch)/(testutil.CPUTime().Seconds()-cpu0), "images/cpu-s")
				})
				ref.Close()
			}
			s.Close()
		}
		dist.Close()
	}
}

func envInt(b *testing.B, name string, def int) int {
	v := os.Getenv(name)
	if v == "" {
		return def
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 1 {
		b.Fatalf("%s=%q: want a positive integer", name, v)
	}
	return n
}
