// Command gpucheck prints what the GPU check reports about the binding on
// this machine: the libtorch version, the devices libtorch sees, and the
// dense matmul throughput in float16 and bfloat16 (TFLOP/s). It runs on a
// CPU-only machine too, where it says that CUDA is absent and measures float32
// matmul on the CPU instead.
package main

import (
	"flag"
	"fmt"
	"os"
	"time"

	"github.com/dp2osr/dp2o/torch"
)

func main() {
	n := flag.Int64("n", 8192, "matrix side for the matmul throughput test")
	iters := flag.Int("iters", 50, "timed matmuls per dtype")
	flag.Parse()
	if err := run(*n, *iters); err != nil {
		fmt.Fprintln(os.Stderr, "gpucheck:", err)
		os.Exit(1)
	}
}

func run(n int64, iters int) (err error) {
	defer torch.Recover(&err)
	fmt.Printf("libtorch:        %s\n", torch.Version())
	fmt.Printf("native SDPA:     %v\n", torch.HasNativeSDPA())
	fmt.Printf("CUDA available:  %v (%d devices)\n", torch.CUDAAvailable(), torch.CUDADeviceCount())
	if !torch.CUDAAvailable() {
		fmt.Println("no CUDA device: measuring float32 matmul on the CPU")
		tflops := matmul(torch.CPU, torch.Float32, 1024, 5)
		fmt.Printf("matmul float32 1024² CPU: %.3f TFLOP/s\n", tflops)
		return nil
	}
	for i := 0; i < torch.CUDADeviceCount(); i++ {
		name, err := torch.CUDADeviceName(i)
		if err != nil {
			return err
		}
		fmt.Printf("GPU %d:           %s\n", i, name)
	}
	dev := torch.CUDA(0)
	for _, dt := range []torch.DType{torch.Float16, torch.BFloat16, torch.Float32} {
		fmt.Printf("matmul %-8v %d²: %.1f TFLOP/s\n", dt, n, matmul(dev, dt, n, iters))
	}
	alloc, peak, reserved, err := torch.CUDAMemory(0)
	if err != nil {
		return err
	}
	fmt.Printf("CUDA memory:     allocated %d MiB, peak %d MiB, reserved %d MiB\n", alloc>>20, peak>>20, reserved>>20)
	return nil
}

// matmul times iters n×n×n matrix products and returns TFLOP/s.
func matmul(dev torch.Device, dt torch.DType, n int64, iters int) float64 {
	s := torch.NewScope()
	defer s.Close()
	g := torch.MustGenerator(dev, 0)
	a := torch.Randn([]int64{n, n}, g, dt, dev)
	b := torch.Randn([]int64{n, n}, g, dt, dev)
	sync := func() {
		if dev.IsCUDA() {
			if err := torch.CUDASynchronize(dev.Index); err != nil {
				panic(err)
			}
		}
	}
	for i := 0; i < 3; i++ {
		a.Matmul(b).Close()
	}
	sync()
	start := time.Now()
	for i := 0; i < iters; i++ {
		a.Matmul(b).Close()
	}
	sync()
	sec := time.Since(start).Seconds()
	return 2 * float64(n*n*n) * float64(iters) / sec / 1e12
}
