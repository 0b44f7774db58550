package torch_test

import (
	"fmt"

	"github.com/dp2osr/dp2o/torch"
)

// A scope frees every tensor made inside it except the ones kept.
func ExampleScope() {
	before := torch.LiveTensors()
	y := func() *torch.Tensor {
		s := torch.NewScope()
		defer s.Close()
		x := torch.FromSlice([]float32{1, 2, 3, 4}, 2, 2)
		return s.Keep(x.Matmul(x).AddScalar(1))
	}()
	fmt.Println(y.Float32s(), torch.LiveTensors()-before)
	y.Close()
	fmt.Println(torch.LiveTensors() - before)
	// Output:
	// [8 11 16 23] 1
	// 0
}

// A seeded generator gives PyTorch's numbers: torch.Generator().manual_seed(0)
// followed by torch.randn(3, generator=g).
func ExampleGenerator() {
	g := torch.MustGenerator(torch.CPU, 0)
	x := torch.Randn([]int64{3}, g, torch.Float32, torch.CPU)
	defer x.Close()
	fmt.Printf("%.4f\n", x.Float32s())
	// Output: [1.5410 -0.2934 -2.1788]
}

// Bad input is an error carrying libtorch's message, never a crash.
func ExampleTry() {
	a := torch.Ones([]int64{2, 3}, torch.Float32, torch.CPU)
	defer a.Close()
	err := torch.Try(func() { a.Matmul(a) })
	fmt.Println(err)
	// Output: torch: matmul: mat1 and mat2 shapes cannot be multiplied (2x3 and 2x3)
}
