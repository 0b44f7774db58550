package torch

// Zeros returns a tensor of zeros.
func Zeros(shape []int64, dtype DType, dev Device) *Tensor {
	return zeros(shape, dtype, int64(dev.Type), int64(dev.Index))
}

// Ones returns a tensor of ones.
func Ones(shape []int64, dtype DType, dev Device) *Tensor {
	return ones(shape, dtype, int64(dev.Type), int64(dev.Index))
}

// Empty returns an uninitialised tensor.
func Empty(shape []int64, dtype DType, dev Device) *Tensor {
	return empty(shape, dtype, int64(dev.Type), int64(dev.Index))
}

// Full returns a tensor filled with v.
func Full(shape []int64, v float64, dtype DType, dev Device) *Tensor {
	return full(shape, v, dtype, int64(dev.Type), int64(dev.Index))
}

// Arange is torch.arange(start, end, step).
func Arange(start, end, step float64, dtype DType, dev Device) *Tensor {
	return arange(start, end, step, dtype, int64(dev.Type), int64(dev.Index))
}

// Linspace is torch.linspace(start, end, steps).
func Linspace(start, end float64, steps int64, dtype DType, dev Device) *Tensor {
	return linspace(start, end, steps, dtype, int64(dev.Type), int64(dev.Index))
}

// Eye is an n×m identity matrix.
func Eye(n, m int64, dtype DType, dev Device) *Tensor {
	return eye(n, m, dtype, int64(dev.Type), int64(dev.Index))
}

// Randn draws N(0,1) from gen (nil: libtorch's default generator of dev).
// Seeded like PyTorch and drawn in the same order, it gives the same numbers.
func Randn(shape []int64, gen *Generator, dtype DType, dev Device) *Tensor {
	return randn(shape, gen, dtype, int64(dev.Type), int64(dev.Index))
}

// Rand draws U[0,1) from gen (nil: the default generator).
func Rand(shape []int64, gen *Generator, dtype DType, dev Device) *Tensor {
	return rand(shape, gen, dtype, int64(dev.Type), int64(dev.Index))
}

// Randint draws integers in [low, high) from gen (nil: the default generator).
func Randint(low, high int64, shape []int64, gen *Generator, dtype DType, dev Device) *Tensor {
	return randint(low, high, shape, gen, dtype, int64(dev.Type), int64(dev.Index))
}

// Randperm is a random permutation of 0..n-1 drawn from gen.
func Randperm(n int64, gen *Generator, dev Device) *Tensor {
	return randperm(n, gen, Int64, int64(dev.Type), int64(dev.Index))
}

// Normal draws N(mean, std²) into a new float tensor, like
// torch.empty(shape).normal_(mean, std, generator=gen).
func Normal(shape []int64, mean, std float64, gen *Generator, dtype DType, dev Device) *Tensor {
	t := Empty(shape, dtype, dev)
	t.Normal_(mean, std, gen)
	return t
}
