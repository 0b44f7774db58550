// Command torchbench measures the per-call overhead of the Go binding next
// to scripts/bench_torch.py, which measures PyTorch on the same libtorch:
// a 1×1 float32 add (results freed by a scope every 1000 ops, or closed one
// by one) and a 2048×2048 float32 matmul, with one intra-op thread and with
// libtorch's default thread count. Each figure is the best of -repeat runs,
// as Python's timeit reports.
//
//	go run ./cmd/torchbench
//	/usr/bin/python3 scripts/bench_torch.py
package main

import (
	"flag"
	"fmt"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/dp2osr/dp2o/torch"
)

func main() {
	repeat := flag.Int("repeat", 7, "timed runs of the small op (the best is reported)")
	largeRepeat := flag.Int("large-repeat", 3, "timed runs of the matmul (the best is reported)")
	smallN := flag.Int("small-n", 200000, "adds per run")
	largeN := flag.Int("large-n", 1, "matmuls per run")
	size := flag.Int64("size", 2048, "matrix side of the large matmul")
	threadList := flag.String("threads", "", "comma-separated intra-op thread counts (default: 1, libtorch's default and the number of CPUs)")
	flag.Parse()
	var threads []int
	for _, f := range strings.Split(*threadList, ",") {
		if f = strings.TrimSpace(f); f == "" {
			continue
		}
		n, err := strconv.Atoi(f)
		if err != nil || n < 1 {
			fmt.Fprintf(os.Stderr, "torchbench: bad thread count %q\n", f)
			os.Exit(2)
		}
		threads = append(threads, n)
	}
	if err := run(threads, *repeat, *largeRepeat, *smallN, *largeN, *size); err != nil {
		fmt.Fprintln(os.Stderr, "torchbench:", err)
		os.Exit(1)
	}
}

// best returns the smallest time per op over repeat runs of f(n).
func best(repeat, n int, f func(n int)) float64 {
	b := time.Duration(1<<63 - 1)
	for range repeat {
		start := time.Now()
		f(n)
		b = min(b, time.Since(start))
	}
	return float64(b.Nanoseconds()) / float64(n)
}

func run(threads []int, repeat, largeRepeat, smallN, largeN int, size int64) (err error) {
	defer torch.Recover(&err)
	defaultThreads := torch.NumThreads()
	fmt.Printf("libtorch %s, default threads %d\n", torch.Version(), defaultThreads)

	x := torch.Ones([]int64{1, 1}, torch.Float32, torch.CPU)
	y := torch.Ones([]int64{1, 1}, torch.Float32, torch.CPU)
	gen := torch.MustGenerator(torch.CPU, 0)
	a := torch.Randn([]int64{size, size}, gen, torch.Float32, torch.CPU)
	b := torch.Randn([]int64{size, size}, gen, torch.Float32, torch.CPU)
	defer func() {
		for _, t := range []*torch.Tensor{x, y, a, b} {
			t.Close()
		}
	}()

	addScoped := func(n int) {
		s := torch.NewScope()
		for i := range n {
			x.Add(y)
			if i%1000 == 999 {
				s.Close()
				s = torch.NewScope()
			}
		}
		s.Close()
	}
	addClose := func(n int) {
		for range n {
			x.Add(y).Close()
		}
	}
	matmul := func(n int) {
		for range n {
			a.Matmul(b).Close()
		}
	}
	if len(threads) == 0 {
		threads = []int{1, defaultThreads, runtime.NumCPU()}
		slices.Sort(threads)
		threads = slices.Compact(threads)
	}
	for _, th := range threads {
		torch.SetNumThreads(th)
		fmt.Printf("go threads=%d AddSmall      %12.1f ns/op\n", th, best(repeat, smallN, addScoped))
		fmt.Printf("go threads=%d AddSmallClose %12.1f ns/op\n", th, best(repeat, smallN, addClose))
		fmt.Printf("go threads=%d MatmulLarge   %12.1f ns/op\n", th, best(largeRepeat, largeN, matmul))
	}
	torch.SetNumThreads(defaultThreads)
	return nil
}
