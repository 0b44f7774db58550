package nn

import (
	"math"

	"github.com/dp2osr/dp2o/torch"
)

// MultiheadAttention is torch.nn.MultiheadAttention in eval mode on the
// path of PyTorch 1.13's F.multi_head_attention_forward (sequence-first
// (L, N, E) layout, no dropout): input projections as _in_projection_packed
// chooses them, heads of E/Heads, q/√d, q·kᵀ (+ additive mask), softmax, ·v,
// out projection.
type MultiheadAttention struct {
	// InProjWeight (3E, E) and InProjBias (3E) are the packed q/k/v
	// projection; with Separate set, Q, K and V are used instead
	// (use_separate_proj_weight, as CLIP's AttentionPool2d calls it).
	InProjWeight, InProjBias *torch.Tensor
	Separate                 bool
	Q, K, V                  *Linear
	OutProj                  *Linear
	Dim, Heads               int64
}

// NewMultiheadAttention reads in_proj_weight, in_proj_bias and out_proj.
func NewMultiheadAttention(b *Builder, dim, heads int64) *MultiheadAttention {
	return &MultiheadAttention{
		InProjWeight: b.Get("in_proj_weight", 3*dim, dim), InProjBias: b.Get("in_proj_bias", 3*dim),
		OutProj: NewLinear(b.Sub("out_proj"), dim, dim, true), Dim: dim, Heads: heads,
	}
}

// Forward attends query (L, N, E) over key and value (S, N, E). mask (may
// be nil) is added to the (N·Heads, L, S) scores (a float mask, e.g. −inf
// above the diagonal for causal attention). As in PyTorch, passing the same
// tensor as query, key and value projects with one packed matmul, and the
// same tensor as key and value with two.
func (m *MultiheadAttention) Forward(query, key, value, mask *torch.Tensor) *torch.Tensor {
	sc := torch.NewScope() // the projections and (N·Heads, L, S) scores die here
	defer sc.Close()
	var q, k, v *torch.Tensor
	e := m.Dim
	switch {
	case m.Separate:
		q, k, v = m.Q.Forward(query), m.K.Forward(key), m.V.Forward(value)
	case key == value && query == key:
		qkv := torch.Linear(query, m.InProjWeight, m.InProjBias).Chunk(3, -1)
		q, k, v = qkv[0], qkv[1], qkv[2]
	case key == value:
		w := m.InProjWeight.SplitSizes([]int64{e, 2 * e}, 0)
		bb := m.InProjBias.SplitSizes([]int64{e, 2 * e}, 0)
		q = torch.Linear(query, w[0], bb[0])
		kv := torch.Linear(key, w[1], bb[1]).Chunk(2, -1)
		k, v = kv[0], kv[1]
	default:
		w := m.InProjWeight.Chunk(3, 0)
		bb := m.InProjBias.Chunk(3, 0)
		q, k, v = torch.Linear(query, w[0], bb[0]), torch.Linear(key, w[1], bb[1]), torch.Linear(value, w[2], bb[2])
	}
	l, n, s := query.Size(0), query.Size(1), key.Size(0)
	hd := e / m.Heads
	q = q.Contiguous().View([]int64{l, n * m.Heads, hd}).Transpose(0, 1)
	k = k.Contiguous().View([]int64{s, n * m.Heads, hd}).Transpose(0, 1)
	v = v.Contiguous().View([]int64{s, n * m.Heads, hd}).Transpose(0, 1)
	q = q.DivScalar(math.Sqrt(float64(hd)))
	var a *torch.Tensor
	if mask != nil {
		a = mask.Baddbmm(q, k.Transpose(-2, -1), 1, 1)
	} else {
		a = q.Bmm(k.Transpose(-2, -1))
	}
	o := a.Softmax(-1).Bmm(v).Transpose(0, 1).Contiguous().View([]int64{l * n, e})
	o = m.OutProj.Forward(o)
	return sc.Keep(o.View([]int64{l, n, o.Size(-1)}))
}
