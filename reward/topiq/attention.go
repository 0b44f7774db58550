package topiq

import (
	"github.com/dp2osr/dp2o/torch"
	"github.com/dp2osr/dp2o/torch/nn"
)

// ffn is linear2(gelu(linear1(x))).
type ffn struct{ l1, l2 *nn.Linear }

func newFFN(b *nn.Builder, dim, hidden int64) ffn {
	return ffn{nn.NewLinear(b.Sub("linear1"), dim, hidden, true), nn.NewLinear(b.Sub("linear2"), hidden, dim, true)}
}

func (f ffn) forward(x *torch.Tensor) *torch.Tensor { return f.l2.Forward(f.l1.Forward(x).Gelu()) }

// encoderLayer is pyiqa's TransformerEncoderLayer (pre-LayerNorm).
type encoderLayer struct {
	attn         *nn.MultiheadAttention
	norm1, norm2 *nn.LayerNorm
	ff           ffn
}

func newEncoderLayer(b *nn.Builder, dim, heads, hidden int64) *encoderLayer {
	return &encoderLayer{
		attn:  nn.NewMultiheadAttention(b.Sub("self_attn"), dim, heads),
		norm1: nn.NewLayerNorm(b.Sub("norm1"), dim, 1e-5, true),
		norm2: nn.NewLayerNorm(b.Sub("norm2"), dim, 1e-5, true),
		ff:    newFFN(b, dim, hidden),
	}
}

func (e *encoderLayer) forward(x *torch.Tensor) *torch.Tensor {
	s := torch.NewScope()
	defer s.Close()
	h := e.norm1.Forward(x)
	x = x.Add(e.attn.Forward(h, h, h, nil))
	return s.Keep(x.Add(e.ff.forward(e.norm2.Forward(x))))
}

// decoderLayer is pyiqa's TransformerDecoderLayer: cross-attention of the
// query tokens over LN2(memory). Its self_attn weights are loaded (the
// checkpoint holds them) but never used, as in pyiqa.
type decoderLayer struct {
	attn                *nn.MultiheadAttention
	norm1, norm2, norm3 *nn.LayerNorm
	ff                  ffn
}

func newDecoderLayer(b *nn.Builder, dim, heads, hidden int64) *decoderLayer {
	nn.NewMultiheadAttention(b.Sub("self_attn"), dim, heads) // unused by pyiqa's forward
	return &decoderLayer{
		attn:  nn.NewMultiheadAttention(b.Sub("multihead_attn"), dim, heads),
		norm1: nn.NewLayerNorm(b.Sub("norm1"), dim, 1e-5, true),
		norm2: nn.NewLayerNorm(b.Sub("norm2"), dim, 1e-5, true),
		norm3: nn.NewLayerNorm(b.Sub("norm3"), dim, 1e-5, true),
		ff:    newFFN(b, dim, hidden),
	}
}

func (d *decoderLayer) forward(q, mem *torch.Tensor) *torch.Tensor {
	s := torch.NewScope()
	defer s.Close()
	mem = d.norm2.Forward(mem)
	q = q.Add(d.attn.Forward(d.norm1.Forward(q), mem, mem, nil))
	return s.Keep(q.Add(d.ff.forward(d.norm3.Forward(q))))
}
