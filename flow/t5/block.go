package t5

import (
	"github.com/dp2osr/dp2o/torch"
	"github.com/dp2osr/dp2o/torch/nn"
)

// Block is one T5Block of the encoder: h + SelfAttention(norm(h)), then
// h + FeedForward(norm(h)). Field names follow the state-dict keys
// (encoder.block.i.layer.0.SelfAttention.q, …, layer.1.DenseReluDense.wo).
type Block struct {
	AttnNorm   *nn.RMSNorm // layer.0.layer_norm
	Q, K, V, O *nn.Linear  // layer.0.SelfAttention.{q,k,v,o}, no bias
	// RelativeBias is layer.0.SelfAttention.relative_attention_bias
	// (num_buckets, num_heads); only the first block has one.
	RelativeBias *nn.Embedding
	FFNorm       *nn.RMSNorm // layer.1.layer_norm
	// Wi0, Wi1 (gated) or Wi (not gated), then Wo: layer.1.DenseReluDense.
	Wi0, Wi1, Wi, Wo *nn.Linear

	heads, dkv int64
	act        func(*torch.Tensor) *torch.Tensor
}

// newBlock builds block i from b, positioned at encoder.block.i.
func newBlock(b *nn.Builder, cfg Config, withBias bool) *Block {
	act, _ := activation(cfg.DenseActFn) // Validate checked it
	d, inner, ff := int64(cfg.DModel), int64(cfg.InnerDim()), int64(cfg.DFF)
	att := b.Sub("layer").SubI(0)
	sa := att.Sub("SelfAttention")
	blk := &Block{
		Q:     nn.NewLinear(sa.Sub("q"), d, inner, false),
		K:     nn.NewLinear(sa.Sub("k"), d, inner, false),
		V:     nn.NewLinear(sa.Sub("v"), d, inner, false),
		O:     nn.NewLinear(sa.Sub("o"), inner, d, false),
		heads: int64(cfg.NumHeads),
		dkv:   int64(cfg.DKV),
		act:   act,
	}
	if withBias {
		blk.RelativeBias = nn.NewEmbedding(sa.Sub("relative_attention_bias"), int64(cfg.NumBuckets), int64(cfg.NumHeads))
	}
	blk.AttnNorm = nn.NewRMSNorm(att.Sub("layer_norm"), d, cfg.LayerNormEps, true)
	ffb := b.Sub("layer").SubI(1)
	dense := ffb.Sub("DenseReluDense")
	if cfg.IsGatedAct {
		blk.Wi0 = nn.NewLinear(dense.Sub("wi_0"), d, ff, false)
		blk.Wi1 = nn.NewLinear(dense.Sub("wi_1"), d, ff, false)
	} else {
		blk.Wi = nn.NewLinear(dense.Sub("wi"), d, ff, false)
	}
	blk.Wo = nn.NewLinear(dense.Sub("wo"), ff, d, false)
	blk.FFNorm = nn.NewRMSNorm(ffb.Sub("layer_norm"), d, cfg.LayerNormEps, true)
	return blk
}

func linear(l *nn.Linear, x *torch.Tensor) *torch.Tensor {
	return torch.FastLinear(x, l.Weight, l.Bias)
}

// PositionBias is T5Attention.compute_bias for a block with
// RelativeBias: (1, heads, n, n) in the bias table's dtype, entry
// [0, h, i, j] = table[bucket(j − i), h] with bidirectional buckets. The
// buckets are computed once per distinct distance (2n−1 of them) and then
// spread over the n×n pairs, which gives PyTorch's entries exactly.
func (blk *Block) PositionBias(n int64, numBuckets, maxDistance int64) *torch.Tensor {
	s := torch.NewScope()
	defer s.Close()
	w := blk.RelativeBias.Weight
	dev := w.Device()
	dist := torch.Arange(float64(1-n), float64(n), 1, torch.Int64, dev) // −(n−1) … n−1
	buckets := RelativePositionBucket(dist, true, numBuckets, maxDistance)
	// relativePositions + n − 1 indexes dist.
	idx := buckets.IndexSelect(0, relativePositions(n, dev).AddScalar(float64(n-1)).To(torch.Int64).Flatten(0, 1))
	values := torch.Embedding(w, idx.View([]int64{n, n})) // (n, n, heads)
	// Contiguous once, so that every block adds it row by row.
	return s.Keep(values.Permute([]int64{2, 0, 1}).Contiguous().Unsqueeze(0))
}

// Forward runs the block on h (B, L, d_model) with the shared position
// bias (1 or B, heads, L, L). It panics with a *torch.Error on failure.
func (blk *Block) Forward(h, bias *torch.Tensor) *torch.Tensor {
	s := torch.NewScope()
	defer s.Close()
	h = h.Add(blk.attention(blk.AttnNorm.Forward(h), bias))
	h = clampFloat16(h)
	h = h.Add(blk.feedForward(blk.FFNorm.Forward(h)))
	return s.Keep(clampFloat16(h))
}

// attention is T5Attention without a mask: softmax(q·kᵀ + bias) in
// float32, cast back, ·v, heads merged, o.
func (blk *Block) attention(x, bias *torch.Tensor) *torch.Tensor {
	sh := x.Shape()
	b, n := sh[0], sh[1]
	split := func(t *torch.Tensor) *torch.Tensor {
		return t.View([]int64{b, -1, blk.heads, blk.dkv}).Transpose(1, 2)
	}
	q := split(linear(blk.Q, x))
	k := split(linear(blk.K, x))
	v := split(linear(blk.V, x))
	scores := q.Matmul(k.Transpose(3, 2))
	// scores += position_bias: in place, so in the scores' dtype.
	scores = scores.Add(bias).To(scores.DType())
	w := scores.To(torch.Float32).Softmax(-1).To(scores.DType())
	a := w.Matmul(v).Transpose(1, 2).Contiguous().View([]int64{b, n, blk.heads * blk.dkv})
	return linear(blk.O, a)
}

// feedForward is T5DenseGatedActDense (wo(act(wi_0 x) · wi_1 x)) or
// T5DenseActDense (wo(act(wi x))), the input of wo cast to wo's dtype.
func (blk *Block) feedForward(x *torch.Tensor) *torch.Tensor {
	var h *torch.Tensor
	if blk.Wi0 != nil {
		h = blk.act(linear(blk.Wi0, x)).Mul(linear(blk.Wi1, x))
	} else {
		h = blk.act(linear(blk.Wi, x))
	}
	if dt := blk.Wo.Weight.DType(); h.DType() != dt {
		h = h.To(dt)
	}
	return linear(blk.Wo, h)
}

// float16Max is torch.finfo(torch.float16).max.
const float16Max = 65504

// clampFloat16 is T5Block's guard for float16 activations: clamp to
// ±(max − 1000) when any entry is infinite, else to ±max. It is computed
// in float32 (libtorch's CPU clamp has no float16 kernel), which gives the
// float16 clamp's values exactly: every float16 is a float32, and the bound
// is rounded to float16 either way.
func clampFloat16(h *torch.Tensor) *torch.Tensor {
	if h.DType() != torch.Float16 {
		return h
	}
	s := torch.NewScope()
	defer s.Close()
	f := h.To(torch.Float32)
	v := float64(float16Max)
	if f.Isfinite().LogicalNot().LogicalAnd(f.Isnan().LogicalNot()).Any() {
		v -= 1000
	}
	return s.Keep(f.Clamp(-v, v).To(torch.Float16))
}
