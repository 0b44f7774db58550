package dist

import (
	"fmt"
	"os"
	"regexp"
	"strconv"
	"testing"
	"time"

	"github.com/dp2osr/dp2o/torch"
)

// BenchmarkAverageGradients times AverageGradients of a float32 gradient
// set (DP2O_DIST_BENCH_MB, default 64, as 16 parameters) between 2 local
// Gloo processes (DP2O_DIST_BENCH_WORLD). ns/op is rank 0's time per call,
// measured inside the worker after one warm-up call; GB/s is the bus
// bandwidth in NCCL's sense, 2(N−1)/N × bytes / time.
//
//	go test ./torch/dist -run '^$' -bench AverageGradients -benchtime 5x
func BenchmarkAverageGradients(b *testing.B) {
	requireGloo(b)
	mb, world := envInt("DP2O_DIST_BENCH_MB", 64), envInt("DP2O_DIST_BENCH_WORLD", 2)
	res, _ := launch(b, "bench", world, 5*time.Minute, "DP2O_DIST_TIMEOUT=2m",
		fmt.Sprintf("DP2O_DIST_BENCH_ITERS=%d", b.N), fmt.Sprintf("DP2O_DIST_BENCH_MB=%d", mb))
	requireAllOK(b, res)
	m := regexp.MustCompile(`per call: ([0-9.e+-]+) s`).FindStringSubmatch(res[0].output)
	if m == nil {
		b.Fatalf("no timing from rank 0:\n%s", res[0].output)
	}
	sec, _ := strconv.ParseFloat(m[1], 64)
	bytes := float64(mb << 20)
	b.ReportMetric(sec*1e9, "ns/op")
	b.ReportMetric(2*float64(world-1)/float64(world)*bytes/sec/1e9, "busGB/s")
	b.ReportMetric(float64(mb), "MiB")
}

func envInt(name string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil && v > 0 {
		return v
	}
	return def
}

// workerBench averages a gradient set DP2O_DIST_BENCH_ITERS times.
func workerBench() int {
	g, err := FromEnv()
	if err != nil {
		fmt.Fprintln(os.Stderr, "join:", err)
		return 1
	}
	defer g.Close()
	const parts = 16
	each := int64(envInt("DP2O_DIST_BENCH_MB", 64)) << 20 / 4 / parts
	s := torch.NewScope()
	defer s.Close()
	var params []*torch.Tensor
	for range parts {
		p := torch.Zeros([]int64{each}, torch.Float32, torch.CPU).SetRequiresGrad(true)
		p.SetGrad(torch.Ones([]int64{each}, torch.Float32, torch.CPU))
		params = append(params, p)
	}
	if err := g.AverageGradients(params); err != nil { // warm-up: connections, buffers
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	iters := envInt("DP2O_DIST_BENCH_ITERS", 1)
	start := time.Now()
	for range iters {
		if err := g.AverageGradients(params); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
	}
	fmt.Printf("per call: %g s\n", time.Since(start).Seconds()/float64(iters))
	return 0
}
