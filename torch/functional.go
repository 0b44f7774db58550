package torch

// #include "csrc/dp2o.h"
import "C"

// InterpolateMode selects F.interpolate's mode.
type InterpolateMode int

// Interpolation modes.
const (
	Nearest      InterpolateMode = 0
	Bilinear     InterpolateMode = 1
	Bicubic      InterpolateMode = 2
	NearestExact InterpolateMode = 3
)

// Interpolate resizes a (N,C,H,W) tensor to size [h, w] as F.interpolate
// does with size= (not scale_factor=); antialias applies to bilinear and
// bicubic when downsampling.
func (t *Tensor) Interpolate(size []int64, mode InterpolateMode, alignCorners, antialias bool) *Tensor {
	return t.interpolate(size, int64(mode), alignCorners, antialias)
}

// PadMode selects F.pad's mode.
type PadMode int

// Padding modes.
const (
	PadConstant  PadMode = 0
	PadReflect   PadMode = 1
	PadReplicate PadMode = 2
)

// Pad is F.pad: pad lists (left, right, top, bottom, …) from the last dim
// backwards; value is used by PadConstant.
func (t *Tensor) Pad(pad []int64, mode PadMode, value float64) *Tensor {
	return t.pad(pad, int64(mode), value)
}

// AttentionOpts are the options of ScaledDotProductAttention.
type AttentionOpts struct {
	Mask   *Tensor // boolean (true = attend) or additive; nil for none
	Causal bool
	Scale  float64 // 0: 1/sqrt(head dim)
	// Math forces the exact reference order softmax(q·kᵀ·scale + mask)·v
	// instead of libtorch 2.x's fused kernels (libtorch 1.x always uses it).
	Math bool
}

// ScaledDotProductAttention is F.scaled_dot_product_attention for q (…, L, E),
// k (…, S, E), v (…, S, Ev).
func ScaledDotProductAttention(q, k, v *Tensor, o AttentionOpts) *Tensor {
	return sdpa(q, k, v, o.Mask, o.Causal, o.Scale, o.Math)
}

// SetAttentionChunkBytes bounds the score blocks of ScaledDotProductAttention's
// math order on the CPU where autograd records nothing (no mask, not
// causal): when the whole (…, L, S) score tensor would be larger than n
// bytes, it is computed a block of query rows of one head at a time, each
// block's scores at most n bytes, so that they stay in cache and the whole
// tensor is never allocated (an SD2 VAE's mid-block attention at 1024²
// output would take 1 GiB per image). Every row gets the same kernels as
// in the whole product. 0 turns it off; the default is 4 MiB, or
// $DP2O_ATTENTION_CHUNK_BYTES when the process starts. It returns the
// previous bound.
func SetAttentionChunkBytes(n int64) int64 {
	return int64(C.dp2o_set_attention_chunk_bytes(C.int64_t(n)))
}

// ClipGradNorm is torch.nn.utils.clip_grad_norm_: it scales the gradients of
// params so that their total norm (normType; math.Inf(1) for max) is at most
// maxNorm, and returns the total norm before clipping.
func ClipGradNorm(params []*Tensor, maxNorm, normType float64) float64 {
	n := clipGradNorm(params, maxNorm, normType)
	defer n.Close()
	return n.Item()
}

// AdamWStep applies one torch.optim.AdamW update (PyTorch 1.13's
// single-tensor rule) to param in place, with its state exp_avg and
// exp_avg_sq, at step (1-based).
func AdamWStep(param, grad, expAvg, expAvgSq *Tensor, step int64, lr, beta1, beta2, eps, weightDecay float64) {
	adamwStep(param, grad, expAvg, expAvgSq, step, lr, beta1, beta2, eps, weightDecay)
}
