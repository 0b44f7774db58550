package transformer

import "github.com/dp2osr/dp2o/torch"

// chunkBytes bounds the attention scores on the CPU: they are computed for
// as many heads (or query rows of one head) at a time as fit in this size —
// 9 MB per head at 512² instead of 226 MB for all 24 — so that the softmax
// works in cache and the buffer is reused from the allocator's heap. The
// results are the same rows computed by the same ops. (The MLPs are not
// split: each piece would make the BLAS repack the whole weight.)
var chunkBytes int64 = 16 << 20

// chunkLen is how many of n slices of sliceBytes bytes fit in chunkBytes
// (at least 1, at most n).
func chunkLen(n, sliceBytes int64) int64 {
	c := chunkBytes / max(sliceBytes, 1)
	return min(max(c, 1), n)
}

// chunked reports whether tensors of x's device are computed in pieces.
func chunked(x *torch.Tensor) bool { return x.Device().Type == torch.DeviceCPU }
