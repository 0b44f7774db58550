package transformer

import (
	"github.com/dp2osr/dp2o/torch"
	"github.com/dp2osr/dp2o/torch/nn"
)

// rmsEps is the epsilon of FLUX's q/k RMS norms and its LayerNorms.
const rmsEps = 1e-6

// rope holds the rotary embedding of the joint sequence [text, image]
// (S, head_dim), shared by every block of a forward pass.
type rope struct{ cos, sin *torch.Tensor }

// qkv is one stream's projections with their per-head RMS norms.
type qkv struct {
	q, k, v      *nn.Linear
	normQ, normK *nn.RMSNorm
}

func newQKV(b *nn.Builder, q, k, v, nq, nk string, dim, inner, headDim int64) *qkv {
	return &qkv{
		q:     nn.NewLinear(b.Sub(q), dim, inner, true),
		k:     nn.NewLinear(b.Sub(k), dim, inner, true),
		v:     nn.NewLinear(b.Sub(v), dim, inner, true),
		normQ: nn.NewRMSNorm(b.Sub(nq), headDim, rmsEps, true),
		normK: nn.NewRMSNorm(b.Sub(nk), headDim, rmsEps, true),
	}
}

// forward returns q, k, v as (B, H, S, d), q and k RMS-normed.
func (p *qkv) forward(x *torch.Tensor, heads, headDim int64) (q, k, v *torch.Tensor) {
	bsz := x.Size(0)
	split := func(t *torch.Tensor) *torch.Tensor {
		return t.View([]int64{bsz, -1, heads, headDim}).Transpose(1, 2)
	}
	q = p.normQ.Forward(split(linear(p.q, x)))
	k = p.normK.Forward(split(linear(p.k, x)))
	v = split(linear(p.v, x))
	return q, k, v
}

// attention is diffusers' Attention with FluxAttnProcessor2_0: the image
// stream's to_q/to_k/to_v (+ norm_q/norm_k) and, in the double blocks, the
// text stream's add_q_proj/add_k_proj/add_v_proj (+ norm_added_q/k) over
// the joint sequence [text, image], RoPE on q and k, softmax(q·kᵀ/√d)·v;
// the double blocks project the image part with to_out.0 and the text part
// with to_add_out, the single blocks return the joint output unprojected.
type attention struct {
	x, ctx         *qkv
	toOut, toAdd   *nn.Linear
	heads, headDim int64
	math           bool
}

func newAttention(b *nn.Builder, dim, heads, headDim int64, joint bool, math bool) *attention {
	inner := heads * headDim
	a := &attention{heads: heads, headDim: headDim, math: math}
	a.x = newQKV(b, "to_q", "to_k", "to_v", "norm_q", "norm_k", dim, inner, headDim)
	if joint {
		a.ctx = newQKV(b, "add_q_proj", "add_k_proj", "add_v_proj", "norm_added_q", "norm_added_k", dim, inner, headDim)
		a.toOut = nn.NewLinear(b.Sub("to_out").SubI(0), inner, dim, true)
		a.toAdd = nn.NewLinear(b.Sub("to_add_out"), inner, dim, true)
	}
	return a
}

// forward attends x (B, L, D) jointly with ctx (B, T, D) (nil in the single
// blocks, where x is already the joint sequence) and returns the image and
// text outputs (text nil without ctx).
func (a *attention) forward(x, ctx *torch.Tensor, r rope) (img, txt *torch.Tensor) {
	s := torch.NewScope()
	defer s.Close()
	bsz := x.Size(0)
	q, k, v := a.x.forward(x, a.heads, a.headDim)
	if ctx != nil {
		cq, ck, cv := a.ctx.forward(ctx, a.heads, a.headDim)
		q = torch.Cat([]*torch.Tensor{cq, q}, 2)
		k = torch.Cat([]*torch.Tensor{ck, k}, 2)
		v = torch.Cat([]*torch.Tensor{cv, v}, 2)
	}
	q = applyRotary(q, r.cos, r.sin)
	k = applyRotary(k, r.cos, r.sin)
	o := torch.ScaledDotProductAttention(q, k, v, torch.AttentionOpts{Math: a.math})
	o = o.Transpose(1, 2).Reshape([]int64{bsz, -1, a.heads * a.headDim}).To(q.DType())
	if ctx == nil {
		return s.Keep(o), nil
	}
	t := ctx.Size(1)
	txt = linear(a.toAdd, o.Narrow(1, 0, t))
	img = linear(a.toOut, o.Narrow(1, t, o.Size(1)-t))
	s.Keep(img, txt)
	return img, txt
}
