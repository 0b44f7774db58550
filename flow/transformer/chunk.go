package transformer

import "github.com/dp2osr/dp2o/torch"

// chunkBytes bounds the largest temporaries of a block on the CPU: the
// attention scores and the 4·D-wide MLP activations are computed in pieces
// of at most this size. Pieces this small are served again and again from
// the allocator's heap and stay in cache, where whole-sequence temporaries
// (hundreds of MB at 512²) take fresh pages — page faults — on every call.
// The results are the same rows computed by the same ops.
var chunkBytes int64 = 16 << 20

// chunkLen is how many of n slices of sliceBytes bytes fit in chunkBytes
// (at least 1, at most n).
func chunkLen(n, sliceBytes int64) int64 {
	c := chunkBytes / max(sliceBytes, 1)
	return min(max(c, 1), n)
}

// chunked reports whether tensors of x's device are computed in pieces.
func chunked(x *torch.Tensor) bool { return x.Device().Type == torch.DeviceCPU }

// byTokens applies f to pieces of the token dim (1) of the (B, N, ·) inputs
// — each piece as wide as width output elements per token allows — and
// concatenates the results along it. Off the CPU, or when one piece covers
// everything, f gets the whole inputs.
func byTokens(width int64, f func(xs ...*torch.Tensor) *torch.Tensor, xs ...*torch.Tensor) *torch.Tensor {
	x := xs[0]
	n := x.Size(1)
	step := chunkLen(n, x.Size(0)*width*int64(x.DType().Size()))
	if !chunked(x) || step >= n {
		return f(xs...)
	}
	s := torch.NewScope()
	defer s.Close()
	var outs []*torch.Tensor
	for start := int64(0); start < n; start += step {
		l := min(step, n-start)
		parts := make([]*torch.Tensor, len(xs))
		for i, t := range xs {
			parts[i] = t.Narrow(1, start, l)
		}
		outs = append(outs, torch.Scoped(func() *torch.Tensor { return f(parts...) }))
	}
	return s.Keep(torch.Cat(outs, 1))
}
