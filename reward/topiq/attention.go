package topiq

import (
	"math"

	"github.com/dp2osr/dp2o/torch"
	"github.com/dp2osr/dp2o/torch/nn"
)

// mha is torch.nn.MultiheadAttention (packed in_proj, (L, N, E) layout,
// eval mode) on PyTorch 1.13's F.multi_head_attention_forward path.
type mha struct {
	inW, inB, outW, outB *torch.Tensor
	dim, heads           int64
}

func newMHA(b *nn.Builder, dim, heads int64) *mha {
	m := &mha{
		inW: b.Get("in_proj_weight", 3*dim, dim), inB: b.Get("in_proj_bias", 3*dim),
		outW: b.Get("out_proj.weight", dim, dim), outB: b.Get("out_proj.bias", dim),
		dim: dim, heads: heads,
	}
	return m
}

// self is self-attention: query, key and value are the same tensor, one
// packed projection chunked in three.
func (m *mha) self(x *torch.Tensor) *torch.Tensor {
	qkv := torch.Linear(x, m.inW, m.inB).Chunk(3, -1)
	return m.attend(qkv[0], qkv[1], qkv[2])
}

// cross is attention of q over kv (key = value): the query projection and
// the packed key/value projection, as _in_projection_packed splits them.
func (m *mha) cross(q, kv *torch.Tensor) *torch.Tensor {
	w := m.inW.SplitSizes([]int64{m.dim, 2 * m.dim}, 0)
	bb := m.inB.SplitSizes([]int64{m.dim, 2 * m.dim}, 0)
	kvp := torch.Linear(kv, w[1], bb[1]).Chunk(2, -1)
	return m.attend(torch.Linear(q, w[0], bb[0]), kvp[0], kvp[1])
}

// attend is the head split, q/√d·kᵀ, softmax, ·v, head merge and out_proj.
func (m *mha) attend(q, k, v *torch.Tensor) *torch.Tensor {
	l, n, s := q.Size(0), q.Size(1), k.Size(0)
	hd := m.dim / m.heads
	q = q.Contiguous().View([]int64{l, n * m.heads, hd}).Transpose(0, 1)
	k = k.Contiguous().View([]int64{s, n * m.heads, hd}).Transpose(0, 1)
	v = v.Contiguous().View([]int64{s, n * m.heads, hd}).Transpose(0, 1)
	q = q.DivScalar(math.Sqrt(float64(hd)))
	a := q.Bmm(k.Transpose(-2, -1)).Softmax(-1)
	o := a.Bmm(v).Transpose(0, 1).Contiguous().View([]int64{l * n, m.dim})
	return torch.Linear(o, m.outW, m.outB).View([]int64{l, n, m.dim})
}

// ffn is linear2(gelu(linear1(x))).
type ffn struct{ l1, l2 *nn.Linear }

func newFFN(b *nn.Builder, dim, hidden int64) ffn {
	return ffn{nn.NewLinear(b.Sub("linear1"), dim, hidden, true), nn.NewLinear(b.Sub("linear2"), hidden, dim, true)}
}

func (f ffn) forward(x *torch.Tensor) *torch.Tensor { return f.l2.Forward(f.l1.Forward(x).Gelu()) }

// encoderLayer is pyiqa's TransformerEncoderLayer (pre-LayerNorm).
type encoderLayer struct {
	attn         *mha
	norm1, norm2 *nn.LayerNorm
	ff           ffn
}

func newEncoderLayer(b *nn.Builder, dim, heads, hidden int64) *encoderLayer {
	return &encoderLayer{
		attn:  newMHA(b.Sub("self_attn"), dim, heads),
		norm1: nn.NewLayerNorm(b.Sub("norm1"), dim, 1e-5, true),
		norm2: nn.NewLayerNorm(b.Sub("norm2"), dim, 1e-5, true),
		ff:    newFFN(b, dim, hidden),
	}
}

func (e *encoderLayer) forward(x *torch.Tensor) *torch.Tensor {
	x = x.Add(e.attn.self(e.norm1.Forward(x)))
	return x.Add(e.ff.forward(e.norm2.Forward(x)))
}

// decoderLayer is pyiqa's TransformerDecoderLayer: cross-attention of the
// query tokens over LN2(memory). Its self_attn weights are loaded (the
// checkpoint holds them) but never used, as in pyiqa.
type decoderLayer struct {
	attn                *mha
	norm1, norm2, norm3 *nn.LayerNorm
	ff                  ffn
}

func newDecoderLayer(b *nn.Builder, dim, heads, hidden int64) *decoderLayer {
	newMHA(b.Sub("self_attn"), dim, heads) // unused by pyiqa's forward
	return &decoderLayer{
		attn:  newMHA(b.Sub("multihead_attn"), dim, heads),
		norm1: nn.NewLayerNorm(b.Sub("norm1"), dim, 1e-5, true),
		norm2: nn.NewLayerNorm(b.Sub("norm2"), dim, 1e-5, true),
		norm3: nn.NewLayerNorm(b.Sub("norm3"), dim, 1e-5, true),
		ff:    newFFN(b, dim, hidden),
	}
}

func (d *decoderLayer) forward(q, mem *torch.Tensor) *torch.Tensor {
	mem = d.norm2.Forward(mem)
	q = q.Add(d.attn.cross(d.norm1.Forward(q), mem))
	return q.Add(d.ff.forward(d.norm3.Forward(q)))
}
