package transformer

import (
	"github.com/dp2osr/dp2o/torch"
	"github.com/dp2osr/dp2o/torch/nn"
)

// modulate is LayerNorm(x, no affine, eps 1e-6)·(1 + scale) + shift with
// scale and shift (B, D) broadcast over the tokens (the AdaLayerNorm forms).
func modulate(x, scale, shift *torch.Tensor) *torch.Tensor {
	s := torch.NewScope()
	defer s.Close()
	n := torch.LayerNorm(x, []int64{x.Size(-1)}, nil, nil, rmsEps)
	return s.Keep(n.Mul(scale.Unsqueeze(1).AddScalar(1)).Add(shift.Unsqueeze(1)))
}

// feedForward is diffusers' FeedForward with "gelu-approximate": net.0.proj
// (D → 4D), tanh GELU, net.2 (4D → D).
type feedForward struct{ proj, out *nn.Linear }

func newFeedForward(b *nn.Builder, dim int64) *feedForward {
	return &feedForward{
		proj: nn.NewLinear(b.Sub("net").SubI(0).Sub("proj"), dim, 4*dim, true),
		out:  nn.NewLinear(b.Sub("net").SubI(2), 4*dim, dim, true),
	}
}

func (f *feedForward) forward(x *torch.Tensor) *torch.Tensor {
	s := torch.NewScope()
	defer s.Close()
	h := linear(f.proj, x)
	g := h.GeluTanh()
	h.Close()
	return s.Keep(linear(f.out, g))
}

// doubleBlock is FluxTransformerBlock: AdaLayerNormZero modulation of both
// streams (norm1, norm1_context), joint attention, then a gated MLP per
// stream (ff, ff_context).
type doubleBlock struct {
	norm1, norm1Ctx *nn.Linear
	attn            *attention
	ff, ffCtx       *feedForward
}

func newDoubleBlock(b *nn.Builder, c Config, math bool) *doubleBlock {
	d := c.InnerDim()
	return &doubleBlock{
		norm1:    nn.NewLinear(b.Sub("norm1").Sub("linear"), d, 6*d, true),
		norm1Ctx: nn.NewLinear(b.Sub("norm1_context").Sub("linear"), d, 6*d, true),
		attn:     newAttention(b.Sub("attn"), d, int64(c.NumAttentionHeads), int64(c.AttentionHeadDim), true, math),
		ff:       newFeedForward(b.Sub("ff"), d),
		ffCtx:    newFeedForward(b.Sub("ff_context"), d),
	}
}

// forward takes silu(temb) (B, D) and returns the new image and text
// streams. With imgOnly (the caller does not use the text stream's output)
// the text stream only provides keys and values, and ctxOut is nil.
func (blk *doubleBlock) forward(x, ctx, siluTemb *torch.Tensor, r rope, imgOnly bool) (xOut, ctxOut *torch.Tensor) {
	s := torch.NewScope()
	defer s.Close()
	// shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp
	e := linear(blk.norm1, siluTemb).Chunk(6, 1)
	ce := linear(blk.norm1Ctx, siluTemb).Chunk(6, 1)
	nx := modulate(x, e[1], e[0])
	nc := modulate(ctx, ce[1], ce[0])
	ax, ac := blk.attn.forward(nx, nc, r, imgOnly, 0)
	nx.Close()
	nc.Close()

	x = x.Add(e[2].Unsqueeze(1).Mul(ax))
	ff := blk.ff.forward(modulate(x, e[4], e[3]))
	x = x.Add(e[5].Unsqueeze(1).Mul(ff))
	if imgOnly {
		return s.Keep(x), nil
	}

	ctx = ctx.Add(ce[2].Unsqueeze(1).Mul(ac))
	ffc := blk.ffCtx.forward(modulate(ctx, ce[4], ce[3]))
	ctx = ctx.Add(ce[5].Unsqueeze(1).Mul(ffc))
	if ctx.DType() == torch.Float16 {
		ctx = ctx.Clamp(-65504, 65504)
	}
	s.Keep(x, ctx)
	return x, ctx
}

// singleBlock is FluxSingleTransformerBlock: AdaLayerNormZeroSingle
// (norm), attention over the joint sequence and a parallel MLP (proj_mlp,
// tanh GELU), both projected by proj_out and gated.
type singleBlock struct {
	norm, projMLP, projOut *nn.Linear
	attn                   *attention
}

func newSingleBlock(b *nn.Builder, c Config, math bool) *singleBlock {
	d := c.InnerDim()
	return &singleBlock{
		norm:    nn.NewLinear(b.Sub("norm").Sub("linear"), d, 3*d, true),
		projMLP: nn.NewLinear(b.Sub("proj_mlp"), d, 4*d, true),
		attn:    newAttention(b.Sub("attn"), d, int64(c.NumAttentionHeads), int64(c.AttentionHeadDim), false, math),
		projOut: nn.NewLinear(b.Sub("proj_out"), 5*d, d, true),
	}
}

// forward returns the new joint sequence, or with imgOnly only its image
// tokens (those after the first txtLen), computing nothing the text rows
// alone need.
func (blk *singleBlock) forward(h, siluTemb *torch.Tensor, r rope, imgOnly bool, txtLen int64) *torch.Tensor {
	s := torch.NewScope()
	defer s.Close()
	e := linear(blk.norm, siluTemb).Chunk(3, 1) // shift, scale, gate
	n := modulate(h, e[1], e[0])
	nq := n
	if imgOnly {
		h = h.Narrow(1, txtLen, h.Size(1)-txtLen)
		nq = n.Narrow(1, txtLen, n.Size(1)-txtLen)
	}
	mlp := linear(blk.projMLP, nq)
	g := mlp.GeluTanh()
	mlp.Close()
	a, _ := blk.attn.forward(n, nil, r, imgOnly, txtLen)
	cat := torch.Cat([]*torch.Tensor{a, g}, 2)
	a.Close()
	g.Close()
	out := linear(blk.projOut, cat)
	cat.Close()
	h = h.Add(e[2].Unsqueeze(1).Mul(out))
	if h.DType() == torch.Float16 {
		h = h.Clamp(-65504, 65504)
	}
	return s.Keep(h)
}
