package transformer

import (
	"math"

	"github.com/dp2osr/dp2o/torch"
	"github.com/dp2osr/dp2o/torch/nn"
)

// rmsEps is the epsilon of FLUX's q/k RMS norms and its LayerNorms.
const rmsEps = 1e-6

// rope holds the rotary embedding of the joint sequence [text, image]
// (S, head_dim), shared by every block of a forward pass: cos and sin with
// its even entries negated (signedSin).
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
	q = p.forwardQ(x, heads, headDim)
	k, v = p.forwardKV(x, heads, headDim)
	return q, k, v
}

func splitHeads(t *torch.Tensor, heads, headDim int64) *torch.Tensor {
	return t.View([]int64{t.Size(0), -1, heads, headDim}).Transpose(1, 2)
}

// forwardQ is the query part of forward.
func (p *qkv) forwardQ(x *torch.Tensor, heads, headDim int64) *torch.Tensor {
	return p.normQ.Forward(splitHeads(linear(p.q, x), heads, headDim))
}

// forwardKV is the key and value part of forward.
func (p *qkv) forwardKV(x *torch.Tensor, heads, headDim int64) (k, v *torch.Tensor) {
	k = p.normK.Forward(splitHeads(linear(p.k, x), heads, headDim))
	v = splitHeads(linear(p.v, x), heads, headDim)
	return k, v
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

func newAttention(b *nn.Builder, dim, heads, headDim int64, joint bool, mathOrder bool) *attention {
	inner := heads * headDim
	a := &attention{heads: heads, headDim: headDim, math: mathOrder}
	a.x = newQKV(b, "to_q", "to_k", "to_v", "norm_q", "norm_k", dim, inner, headDim)
	if joint {
		a.ctx = newQKV(b, "add_q_proj", "add_k_proj", "add_v_proj", "norm_added_q", "norm_added_k", dim, inner, headDim)
		a.toOut = nn.NewLinear(b.Sub("to_out").SubI(0), inner, dim, true)
		a.toAdd = nn.NewLinear(b.Sub("to_add_out"), inner, dim, true)
	}
	return a
}

// forward attends x (B, L, D) jointly with ctx (B, T, D) (nil in the single
// blocks, where x is already the joint sequence [text, image]) and returns
// the image and text outputs (text nil without ctx). With imgOnly the text
// rows of the output are not computed (their queries are skipped): the
// caller needs only the image part; in the single blocks txtLen is then the
// number of text tokens at the front of x.
func (a *attention) forward(x, ctx *torch.Tensor, r rope, imgOnly bool, txtLen int64) (img, txt *torch.Tensor) {
	s := torch.NewScope()
	defer s.Close()
	bsz := x.Size(0)
	var q, k, v *torch.Tensor
	cos, sin := r.cos, r.sin
	switch {
	case ctx != nil && imgOnly:
		txtLen = ctx.Size(1)
		q, k, v = a.x.forward(x, a.heads, a.headDim)
		ck, cv := a.ctx.forwardKV(ctx, a.heads, a.headDim)
		k = torch.Cat([]*torch.Tensor{ck, k}, 2)
		v = torch.Cat([]*torch.Tensor{cv, v}, 2)
	case ctx != nil:
		q, k, v = a.x.forward(x, a.heads, a.headDim)
		cq, ck, cv := a.ctx.forward(ctx, a.heads, a.headDim)
		q = torch.Cat([]*torch.Tensor{cq, q}, 2)
		k = torch.Cat([]*torch.Tensor{ck, k}, 2)
		v = torch.Cat([]*torch.Tensor{cv, v}, 2)
	case imgOnly:
		q = a.x.forwardQ(x.Narrow(1, txtLen, x.Size(1)-txtLen), a.heads, a.headDim)
		k, v = a.x.forwardKV(x, a.heads, a.headDim)
	default:
		q, k, v = a.x.forward(x, a.heads, a.headDim)
	}
	if imgOnly {
		n := cos.Size(0) - txtLen
		q = applyRotary(q, cos.Narrow(0, txtLen, n), sin.Narrow(0, txtLen, n))
	} else {
		q = applyRotary(q, cos, sin)
	}
	k = applyRotary(k, cos, sin)
	o := a.attend(q, k, v)
	o = o.Transpose(1, 2).Reshape([]int64{bsz, -1, a.heads * a.headDim}).To(q.DType())
	switch {
	case ctx == nil:
		return s.Keep(o), nil
	case imgOnly:
		return s.Keep(linear(a.toOut, o)), nil
	}
	t := ctx.Size(1)
	txt = linear(a.toAdd, o.Narrow(1, 0, t))
	img = linear(a.toOut, o.Narrow(1, t, o.Size(1)-t))
	s.Keep(img, txt)
	return img, txt
}

// attend is F.scaled_dot_product_attention for q (B, H, L, d), k and v
// (B, H, S, d). On the CPU it is the math order softmax(q·kᵀ·d^−½)·v with
// the scale applied in place to the product,
// computed for as many heads and query rows at a time as keep the scores
// within chunkBytes; elsewhere libtorch's fused kernels where it has them.
func (a *attention) attend(q, k, v *torch.Tensor) *torch.Tensor {
	if !a.math {
		return torch.ScaledDotProductAttention(q, k, v, torch.AttentionOpts{})
	}
	s := torch.NewScope()
	defer s.Close()
	b, h, l, d := q.Size(0), q.Size(1), q.Size(2), q.Size(3)
	sl := k.Size(2)
	scale := 1 / math.Sqrt(float64(d))
	elem := int64(q.DType().Size())
	rowBytes := b * sl * elem
	hs := chunkLen(h, l*rowBytes) // heads per piece
	ls := l                       // query rows per piece
	if hs == 1 {
		ls = chunkLen(l, rowBytes)
	}
	if !chunked(q) {
		hs, ls = h, l
	}
	var heads []*torch.Tensor
	for h0 := int64(0); h0 < h; h0 += hs {
		nh := min(hs, h-h0)
		// A scope per piece of heads: its k/v copies (Reshape copies a
		// batch > 1 slice) and row pieces go before the next piece's.
		heads = append(heads, torch.Scoped(func() *torch.Tensor {
			k3 := k.Narrow(1, h0, nh).Reshape([]int64{b * nh, sl, d}).Transpose(1, 2)
			v3 := v.Narrow(1, h0, nh).Reshape([]int64{b * nh, sl, d})
			var rows []*torch.Tensor
			for l0 := int64(0); l0 < l; l0 += ls {
				nl := min(ls, l-l0)
				rows = append(rows, torch.Scoped(func() *torch.Tensor {
					q3 := q.Narrow(1, h0, nh).Narrow(2, l0, nl).Reshape([]int64{b * nh, nl, d})
					// Not baddbmm with beta 0: for small products libtorch 1.13's
					// CPU kernel still computes 0·out over its uninitialised
					// output, so a NaN left in reused memory reaches the scores.
					scores := q3.Bmm(k3)
					scores.MulScalar_(scale)
					p := scores.Softmax(-1)
					scores.Close()
					return p.Bmm(v3).View([]int64{b, nh, nl, d})
				}))
			}
			if len(rows) == 1 {
				return rows[0]
			}
			return torch.Cat(rows, 2)
		}))
	}
	if len(heads) == 1 {
		return s.Keep(heads[0])
	}
	return s.Keep(torch.Cat(heads, 1))
}
