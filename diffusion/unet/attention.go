package unet

import (
	"github.com/dp2osr/dp2o/torch"
	"github.com/dp2osr/dp2o/torch/nn"
)

// attnOpts are the attention settings shared by every block of a model.
type attnOpts struct {
	// math forces the exact reference order softmax(q·kᵀ·d^-0.5)·v (the
	// fixtures' order, and the only path of libtorch 1.x); otherwise
	// libtorch's fused kernels run where it has them.
	math bool
	// upcast computes attention in float32 for half-precision inputs
	// (config.upcast_attention).
	upcast bool
}

// attention is diffusers' Attention with AttnProcessor2_0: to_q/to_k/to_v
// without bias, to_out.0 with bias, heads of dim dimHead.
type attention struct {
	toQ, toK, toV, toOut *nn.Linear
	heads, dimHead       int64
	opts                 *attnOpts
}

// newAttention takes query_dim dim and key/value input dim kvDim.
func newAttention(b *nn.Builder, dim, kvDim, heads, dimHead int64, o *attnOpts) *attention {
	inner := heads * dimHead
	return &attention{
		toQ:     nn.NewLinear(b.Sub("to_q"), dim, inner, false),
		toK:     nn.NewLinear(b.Sub("to_k"), kvDim, inner, false),
		toV:     nn.NewLinear(b.Sub("to_v"), kvDim, inner, false),
		toOut:   nn.NewLinear(b.Sub("to_out").SubI(0), inner, dim, true),
		heads:   heads,
		dimHead: dimHead,
		opts:    o,
	}
}

// forward attends x (B, L, dim) to ctx (B, S, kvDim); ctx nil is self-attention.
func (a *attention) forward(x, ctx *torch.Tensor) *torch.Tensor {
	dt := x.DType()
	if a.opts.math && !(a.opts.upcast && (dt == torch.Float16 || dt == torch.BFloat16)) {
		// The whole block in one call: the same math order, and on the
		// CPU without autograd libtorch's XNNPACK kernels.
		return torch.FusedAttention(x, ctx, a.toQ.Weight, a.toK.Weight, a.toV.Weight, a.toOut.Weight, a.toOut.Bias, a.heads)
	}
	s := torch.NewScope()
	defer s.Close()
	if ctx == nil {
		ctx = x
	}
	bsz := x.Size(0)
	// split returns (B, heads, L, d) and drops the handles of the
	// intermediates, so that closing the result frees the projection.
	split := func(t *torch.Tensor) *torch.Tensor {
		v := t.View([]int64{bsz, -1, a.heads, a.dimHead})
		out := v.Transpose(1, 2)
		t.Close()
		v.Close()
		return out
	}
	q := split(a.toQ.Forward(x))
	k := split(a.toK.Forward(ctx))
	v := split(a.toV.Forward(ctx))
	if a.opts.upcast && (dt == torch.Float16 || dt == torch.BFloat16) {
		q, k, v = q.To(torch.Float32), k.To(torch.Float32), v.To(torch.Float32)
	}
	o := torch.ScaledDotProductAttention(q, k, v, torch.AttentionOpts{Math: a.opts.math})
	q.Close()
	k.Close()
	v.Close()
	if o.DType() != dt {
		o = o.To(dt)
	}
	o = o.Transpose(1, 2).Reshape([]int64{bsz, -1, a.heads * a.dimHead})
	return s.Keep(a.toOut.Forward(o))
}

// feedForward is diffusers' FeedForward with GEGLU: net.0.proj (dim →
// 2·inner), a·gelu(gate), net.2 (inner → dim).
type feedForward struct {
	proj, out *nn.Linear
}

func newFeedForward(b *nn.Builder, dim int64) *feedForward {
	inner := 4 * dim
	return &feedForward{
		proj: nn.NewLinear(b.Sub("net").SubI(0).Sub("proj"), dim, 2*inner, true),
		out:  nn.NewLinear(b.Sub("net").SubI(2), inner, dim, true),
	}
}

func (f *feedForward) forward(x *torch.Tensor) *torch.Tensor {
	if f.proj.Bias != nil && f.out.Bias != nil {
		// One call, the same math; XNNPACK on the CPU without autograd.
		return torch.GEGLUFeedForward(x, f.proj.Weight, f.proj.Bias, f.out.Weight, f.out.Bias)
	}
	s := torch.NewScope()
	defer s.Close()
	p := f.proj.Forward(x)
	parts := p.Chunk(2, -1)
	g := parts[1].Gelu()
	h := parts[0].Mul(g)
	// The 8·dim-wide intermediates are the largest of the block: free them
	// before the output projection rather than at the end of the scope.
	for _, t := range append(parts, p, g) {
		t.Close()
	}
	return s.Keep(f.out.Forward(h))
}

// transformerBlock is diffusers' BasicTransformerBlock (layer_norm, GEGLU):
// x += attn1(norm1 x); x += attn2(norm2 x, text); x += ff(norm3 x).
type transformerBlock struct {
	norm1, norm2, norm3 *nn.LayerNorm
	attn1, attn2        *attention
	ff                  *feedForward
	onlyCross           bool
}

func newTransformerBlock(b *nn.Builder, dim, heads, dimHead, crossDim int64, onlyCross bool, o *attnOpts) *transformerBlock {
	t := &transformerBlock{onlyCross: onlyCross}
	kv1 := dim
	if onlyCross {
		kv1 = crossDim
	}
	t.norm1 = nn.NewLayerNorm(b.Sub("norm1"), dim, 1e-5, true)
	t.attn1 = newAttention(b.Sub("attn1"), dim, kv1, heads, dimHead, o)
	t.norm2 = nn.NewLayerNorm(b.Sub("norm2"), dim, 1e-5, true)
	t.attn2 = newAttention(b.Sub("attn2"), dim, crossDim, heads, dimHead, o)
	t.norm3 = nn.NewLayerNorm(b.Sub("norm3"), dim, 1e-5, true)
	t.ff = newFeedForward(b.Sub("ff"), dim)
	return t
}

func (t *transformerBlock) forward(x, text *torch.Tensor) *torch.Tensor {
	s := torch.NewScope()
	defer s.Close()
	var ctx1 *torch.Tensor
	if t.onlyCross {
		ctx1 = text
	}
	h := t.attn1.forward(t.norm1.Forward(x), ctx1).Add(x)
	h = t.attn2.forward(t.norm2.Forward(h), text).Add(h)
	h = t.ff.forward(t.norm3.Forward(h)).Add(h)
	return s.Keep(h)
}

// transformer2D is diffusers' Transformer2DModel for continuous inputs:
// GroupNorm (eps 1e-6), proj_in (Linear, or a 1×1 conv without
// use_linear_projection), the transformer blocks over the H·W tokens,
// proj_out, plus the input.
type transformer2D struct {
	norm            *nn.GroupNorm
	projInL         *nn.Linear
	projOutL        *nn.Linear
	projInC         *nn.Conv2d
	projOutC        *nn.Conv2d
	blocks          []*transformerBlock
	inner           int64
	useLinearProjIn bool
}

func newTransformer2D(b *nn.Builder, l *blockLayout, ch int64, heads, layers, crossDim int, onlyCross bool, o *attnOpts) *transformer2D {
	dimHead := ch / int64(heads)
	inner := int64(heads) * dimHead
	t := &transformer2D{inner: inner, useLinearProjIn: l.linearProj}
	t.norm = nn.NewGroupNorm(b.Sub("norm"), l.groups, ch, 1e-6)
	if l.linearProj {
		t.projInL = nn.NewLinear(b.Sub("proj_in"), ch, inner, true)
	} else {
		t.projInC = nn.NewConv2d(b.Sub("proj_in"), ch, inner, 1, nn.Conv2dConfig{})
	}
	for i := range layers {
		t.blocks = append(t.blocks, newTransformerBlock(b.Sub("transformer_blocks").SubI(i), inner, int64(heads), dimHead, int64(crossDim), onlyCross, o))
	}
	if l.linearProj {
		t.projOutL = nn.NewLinear(b.Sub("proj_out"), inner, ch, true)
	} else {
		t.projOutC = nn.NewConv2d(b.Sub("proj_out"), inner, ch, 1, nn.Conv2dConfig{})
	}
	return t
}

func (t *transformer2D) forward(x, text *torch.Tensor) *torch.Tensor {
	s := torch.NewScope()
	defer s.Close()
	sh := x.Shape()
	bsz, hgt, wid := sh[0], sh[2], sh[3]
	h := t.norm.Forward(x)
	tokens := func(h *torch.Tensor) *torch.Tensor { // (B, C, H, W) → (B, HW, C)
		return h.Permute([]int64{0, 2, 3, 1}).Reshape([]int64{bsz, hgt * wid, -1})
	}
	image := func(h *torch.Tensor) *torch.Tensor { // (B, HW, C) → (B, C, H, W)
		return h.Reshape([]int64{bsz, hgt, wid, -1}).Permute([]int64{0, 3, 1, 2}).Contiguous()
	}
	if t.useLinearProjIn {
		h = torch.FastLinear(tokens(h), t.projInL.Weight, t.projInL.Bias)
	} else {
		h = tokens(t.projInC.Forward(h))
	}
	for _, blk := range t.blocks {
		h = blk.forward(h, text)
	}
	if t.useLinearProjIn {
		h = image(torch.FastLinear(h, t.projOutL.Weight, t.projOutL.Bias))
	} else {
		h = t.projOutC.Forward(image(h))
	}
	return s.Keep(h.Add(x))
}
