// Command torchbench measures the per-call overhead of the Go binding in one
// run against its two references on the same libtorch: a bare C++ loop of
// the same ATen call (in the shim, no C ABI crossing) and PyTorch
// (scripts/bench_torch.py, run as a subprocess with -python). The cases are
// a 1×1 float32 add (results freed by a scope every 1000 ops, or closed one
// by one; and the shim called straight from Go, the floor of the latter) and
// a 2048×2048 float32 matmul, with one intra-op thread and with
// libtorch's default thread count. Each figure is the best of -repeat runs,
// as Python's timeit reports, in process CPU time (not wall time: other load
// on the machine stays out of it). The summary gives each binding's overhead, its
// time above the bare C++ loop, and the Go/Python ratios of overheads (Go
// closing each result at once, as CPython's reference counting frees it,
// and Go freeing through scopes).
//
// Each process measures its overhead against the bare loop timed in that
// process, runs taking turns (the Python script calls the shim's loop
// through ctypes: both processes load the same libtorch), and the two
// processes take turns -blocks times, so that a slow spell of a shared
// machine does not land on one side only.
//
//	go run ./cmd/torchbench -threads 1
package main

import (
	"flag"
	"fmt"
	"math"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
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
	python := flag.String("python", "/usr/bin/python3", "Python with torch for scripts/bench_torch.py (empty: skip PyTorch)")
	script := flag.String("script", "scripts/bench_torch.py", "the PyTorch side of the benchmark")
	shim := flag.String("shim", "build/libdp2otorch.so", "the shim the Python side loads to time the bare loop in its own process")
	blocks := flag.Int("blocks", 3, "turns the Go and Python processes take, each of -repeat/-blocks rounds")
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
	if *blocks < 1 || *blocks > *repeat {
		fmt.Fprintln(os.Stderr, "torchbench: -blocks must be between 1 and -repeat")
		os.Exit(2)
	}
	cfg := config{repeat: *repeat, largeRepeat: *largeRepeat, smallN: *smallN, largeN: *largeN, size: *size,
		python: *python, script: *script, shim: *shim, blocks: *blocks}
	if err := run(threads, cfg); err != nil {
		fmt.Fprintln(os.Stderr, "torchbench:", err)
		os.Exit(1)
	}
}

// cpuNow is the process's CPU time (user + system). All three sides of the
// benchmark count CPU time rather than wall time, so that other load on the
// machine does not enter the figures; Go's is the whole process's, garbage
// collector included.
func cpuNow() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		panic(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// best returns the smallest CPU time per op over repeat runs of f(n).
func best(repeat, n int, f func(n int)) float64 {
	b := time.Duration(1<<63 - 1)
	for range repeat {
		start := cpuNow()
		f(n)
		b = min(b, cpuNow()-start)
	}
	return float64(b.Nanoseconds()) / float64(n)
}

// bareRun is one run of the shim's C++ loop, which times itself (ns/op).
func bareRun(n int, loop torch.BareLoop) float64 {
	ns, err := torch.BareAddNs(n, loop)
	if err != nil {
		panic(err)
	}
	return ns
}

// config holds the command's flags.
type config struct {
	repeat, largeRepeat, smallN, largeN, blocks int
	size                                        int64
	python, script, shim                        string
}

func run(threads []int, cfg config) (err error) {
	repeat, largeRepeat, smallN, largeN, size := cfg.repeat, cfg.largeRepeat, cfg.smallN, cfg.largeN, cfg.size
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
		py := map[string]float64{}
		pyOK := cfg.python != ""
		bare, bareHandles, bareScoped, goAdd, goClose, goRaw := math.Inf(1), math.Inf(1), math.Inf(1), math.Inf(1), math.Inf(1), math.Inf(1)
		for blk := range cfg.blocks {
			// Round counts split as evenly as the blocks allow.
			rounds := repeat*(blk+1)/cfg.blocks - repeat*blk/cfg.blocks
			if pyOK {
				// PyTorch in its own process, not competing with the Go
				// loops; the matmul in the first block only.
				lr := 0
				if blk == 0 {
					lr = largeRepeat
				}
				r, err := runPython(cfg, th, rounds, lr)
				if err != nil {
					fmt.Fprintf(os.Stderr, "torchbench: PyTorch side skipped: %v\n", err)
					pyOK = false
				}
				for k, v := range r {
					if old, ok := py[k]; !ok || v < old {
						py[k] = v
					}
				}
			}
			torch.SetNumThreads(th)
			// The small cases take turns, one run each per round, so that a
			// slow spell of the machine hits them all alike; each keeps its best.
			for range rounds {
				// Cases freeing each result at once come first: those that
				// free 1000 at a time leave the C allocator's free lists long.
				bare = min(bare, bareRun(smallN, torch.BareATen))
				bareHandles = min(bareHandles, bareRun(smallN, torch.BareHandles))
				goRaw = min(goRaw, best(1, smallN, func(n int) { torch.RawAddClose(x, y, n) }))
				goClose = min(goClose, best(1, smallN, addClose))
				bareScoped = min(bareScoped, bareRun(smallN, torch.BareScoped))
				goAdd = min(goAdd, best(1, smallN, addScoped))
			}
		}
		fmt.Printf("c++ threads=%d AddSmall      %12.1f ns/op  (bare at::add loop)\n", th, bare)
		fmt.Printf("c++ threads=%d AddSmallShim  %12.1f ns/op  (+ shim handle wrap/free)\n", th, bareHandles)
		fmt.Printf("c++ threads=%d AddSmallBatch %12.1f ns/op  (+ handles freed 1000 at a time, as a scope)\n", th, bareScoped)
		fmt.Printf("go  threads=%d AddSmall      %12.1f ns/op  (results freed by a scope every 1000 ops)\n", th, goAdd)
		fmt.Printf("go  threads=%d AddSmallRaw   %12.1f ns/op  (the shim called straight from Go: the cgo floor of AddSmallClose)\n", th, goRaw)
		fmt.Printf("go  threads=%d AddSmallClose %12.1f ns/op  (each result closed at once)\n", th, goClose)
		fmt.Printf("go  threads=%d MatmulLarge   %12.1f ns/op\n", th, best(largeRepeat, largeN, matmul))
		if pyAdd, ok := py["AddSmall"]; ok {
			pyBare, inProcess := py["BareAdd"]
			if !inProcess {
				pyBare = bare // no -shim: Python's overhead above the Go process's bare loop
			}
			fmt.Printf("py  threads=%d AddSmall      %12.1f ns/op\n", th, pyAdd)
			if inProcess {
				fmt.Printf("py  threads=%d BareAdd       %12.1f ns/op  (the bare at::add loop, timed in the Python process)\n", th, pyBare)
			}
			fmt.Printf("py  threads=%d MatmulLarge   %12.1f ns/op\n", th, py["MatmulLarge"])
			closeOver, scopeOver, rawOver, pyOver := goClose-bare, goAdd-bare, goRaw-bare, pyAdd-pyBare
			fmt.Printf("overhead above bare C++ (threads=%d): Python %.1f ns; Go closed at once %.1f ns (cgo floor %.1f), Go/Python %.2f; Go in scopes %.1f ns, Go/Python %.2f\n",
				th, pyOver, closeOver, rawOver, closeOver/pyOver, scopeOver, scopeOver/pyOver)
			// A scope frees its results in batches, and so pays the C
			// allocator's batch penalty that the C++ loop freeing the same
			// way pays too (AddSmallBatch); the rest is the binding's.
			batch := bareScoped - bareHandles
			fmt.Printf("of Go's overhead in scopes, %.1f ns is the C allocator's batch penalty (c++ AddSmallBatch - AddSmallShim); the binding's %.1f ns, Go/Python %.2f\n",
				batch, scopeOver-batch, (scopeOver-batch)/pyOver)
		}
	}
	torch.SetNumThreads(defaultThreads)
	return nil
}

// runPython runs the PyTorch side for one thread count and returns its
// figures by case name (AddSmall, BareAdd with a shim, MatmulLarge when
// largeRepeat > 0), in ns/op.
func runPython(cfg config, threads, repeat, largeRepeat int) (map[string]float64, error) {
	python, script := cfg.python, cfg.script
	args := []string{script, "--threads", strconv.Itoa(threads), "--repeat", strconv.Itoa(repeat),
		"--large-repeat", strconv.Itoa(largeRepeat), "--small-n", strconv.Itoa(cfg.smallN), "--large-n", strconv.Itoa(cfg.largeN),
		"--size", strconv.FormatInt(cfg.size, 10)}
	if cfg.shim != "" {
		args = append(args, "--shim", cfg.shim)
	}
	cmd := exec.Command(python, args...)
	cmd.Stderr = os.Stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("%s %s: %w", python, script, err)
	}
	res := map[string]float64{}
	for _, line := range strings.Split(string(out), "\n") {
		// python threads=1 AddSmall   123.4 ns/op
		f := strings.Fields(line)
		if len(f) == 5 && f[0] == "python" && f[4] == "ns/op" {
			if v, err := strconv.ParseFloat(f[3], 64); err == nil {
				res[f[2]] = v
			}
		}
	}
	if len(res) == 0 {
		return nil, fmt.Errorf("%s printed no figures", script)
	}
	return res, nil
}
