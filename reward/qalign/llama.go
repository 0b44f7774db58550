package qalign

import (
	"fmt"
	"math"

	"github.com/dp2osr/dp2o/torch"
	"github.com/dp2osr/dp2o/torch/nn"
)

// llama is mPLUG-Owl2's modality-adaptive LLaMA decoder: every layer's
// input_layernorm, post_attention_layernorm, k_proj and v_proj hold two
// copies (multiway.0 for text tokens, multiway.1 for visual tokens); the
// rest is LLaMA's.
type llama struct {
	cfg     Config
	embed   *torch.Tensor
	layers  []*decoderLayer
	norm    *torch.Tensor
	lmHead  *torch.Tensor
	headDim int64
}

type decoderLayer struct {
	ln1, ln2     [2]*torch.Tensor
	q, o         *torch.Tensor
	k, v         [2]*torch.Tensor
	gate, up, dn *torch.Tensor
}

func newLlama(b *nn.Builder, c Config) *llama {
	m := &llama{cfg: c, headDim: c.HiddenSize / c.NumAttentionHeads}
	kv := m.headDim * c.NumKeyValueHeads
	h := c.HiddenSize
	mb := b.Sub("model")
	m.embed = mb.Get("embed_tokens.weight", c.VocabSize, h)
	for i := 0; i < c.NumHiddenLayers; i++ {
		lb := mb.Sub("layers").SubI(i)
		l := &decoderLayer{}
		for w := 0; w < 2; w++ {
			l.ln1[w] = lb.Sub("input_layernorm.multiway").SubI(w).Get("weight", h)
		}
		l.gate = lb.Get("mlp.gate_proj.weight", c.IntermediateSize, h)
		l.up = lb.Get("mlp.up_proj.weight", c.IntermediateSize, h)
		l.dn = lb.Get("mlp.down_proj.weight", h, c.IntermediateSize)
		for w := 0; w < 2; w++ {
			l.ln2[w] = lb.Sub("post_attention_layernorm.multiway").SubI(w).Get("weight", h)
		}
		for w := 0; w < 2; w++ {
			l.k[w] = lb.Sub("self_attn.k_proj.multiway").SubI(w).Get("weight", kv, h)
		}
		l.o = lb.Get("self_attn.o_proj.weight", h, h)
		l.q = lb.Get("self_attn.q_proj.weight", h, h)
		for w := 0; w < 2; w++ {
			l.v[w] = lb.Sub("self_attn.v_proj.multiway").SubI(w).Get("weight", kv, h)
		}
		m.layers = append(m.layers, l)
	}
	m.norm = mb.Get("norm.weight", h)
	m.lmHead = b.Get("lm_head.weight", c.VocabSize, h)
	return m
}

// layout is where the visual tokens sit in the spliced sequence:
// positions [at, at+n) are visual, the rest text.
type layout struct{ at, n, total int64 }

// multiway applies f[0] to the text tokens and f[1] to the visual ones of
// x (B,L,D) and reassembles the sequence.
func (lay layout) multiway(x *torch.Tensor, f [2]func(*torch.Tensor) *torch.Tensor) *torch.Tensor {
	before := x.Narrow(1, 0, lay.at)
	vis := x.Narrow(1, lay.at, lay.n)
	after := x.Narrow(1, lay.at+lay.n, lay.total-lay.at-lay.n)
	text := f[0](torch.Cat([]*torch.Tensor{before, after}, 1))
	v := f[1](vis)
	return torch.Cat([]*torch.Tensor{text.Narrow(1, 0, lay.at), v, text.Narrow(1, lay.at, text.Size(1)-lay.at)}, 1)
}

// rope returns cos and sin (L, head_dim) of LLaMA's rotary embedding for
// positions 0..L−1 in dtype dt: inv_freq = 1/θ^(arange(0,d,2)/d) and the
// angles in float32.
func (m *llama) rope(l int64, dt torch.DType, dev torch.Device) (cos, sin *torch.Tensor) {
	d := m.headDim
	ex := torch.Arange(0, float64(d), 2, torch.Int64, dev).To(torch.Float32).DivScalar(float64(d))
	inv := torch.Full([]int64{d / 2}, m.cfg.RopeTheta, torch.Float32, dev).PowT(ex).Reciprocal()
	pos := torch.Arange(0, float64(l), 1, torch.Int64, dev).To(torch.Float32)
	f := pos.Unsqueeze(1).Mul(inv.Unsqueeze(0))
	emb := torch.Cat([]*torch.Tensor{f, f}, -1)
	return emb.Cos().To(dt), emb.Sin().To(dt)
}

func rotateHalf(x *torch.Tensor) *torch.Tensor {
	h := x.Size(-1) / 2
	return torch.Cat([]*torch.Tensor{x.Narrow(-1, h, h).Neg(), x.Narrow(-1, 0, h)}, -1)
}

// forward runs the decoder over inputs_embeds (B,L,H) and returns the
// final norm's output (B,L,H), a layer at a time through torch.Then.
func (m *llama) forward(h *torch.Tensor, lay layout, tap Tap) *torch.Tensor {
	n, l := h.Size(0), h.Size(1)
	dt, dev := h.DType(), h.Device()
	heads, kvHeads, hd := m.cfg.NumAttentionHeads, m.cfg.NumKeyValueHeads, m.headDim
	eps := m.cfg.RMSNormEps
	cos, sin := m.rope(l, dt, dev)
	cos, sin = cos.Unsqueeze(0).Unsqueeze(0), sin.Unsqueeze(0).Unsqueeze(0)
	minV := -math.MaxFloat32
	if dt == torch.Float16 {
		minV = -65504
	} else if dt == torch.BFloat16 {
		minV = -3.3895313892515355e38
	}
	mask := torch.Full([]int64{l, l}, minV, dt, dev).Triu(1)
	rms := func(w [2]*torch.Tensor) [2]func(*torch.Tensor) *torch.Tensor {
		return [2]func(*torch.Tensor) *torch.Tensor{
			func(x *torch.Tensor) *torch.Tensor { return torch.RMSNorm(x, w[0], eps) },
			func(x *torch.Tensor) *torch.Tensor { return torch.RMSNorm(x, w[1], eps) },
		}
	}
	lin := func(w [2]*torch.Tensor) [2]func(*torch.Tensor) *torch.Tensor {
		return [2]func(*torch.Tensor) *torch.Tensor{
			func(x *torch.Tensor) *torch.Tensor { return torch.Linear(x, w[0], nil) },
			func(x *torch.Tensor) *torch.Tensor { return torch.Linear(x, w[1], nil) },
		}
	}
	shape := func(x *torch.Tensor, nh int64) *torch.Tensor {
		return x.View([]int64{n, l, nh, hd}).Transpose(1, 2)
	}
	repeat := func(x *torch.Tensor) *torch.Tensor {
		if kvHeads == heads {
			return x
		}
		return x.RepeatInterleave(heads/kvHeads, 1)
	}
	scale := math.Sqrt(float64(hd))
	in := h // the caller's: Then keeps it
	for i, ly := range m.layers {
		h = torch.Then(h, func(prev *torch.Tensor) *torch.Tensor {
			x := lay.multiway(prev, rms(ly.ln1))
			q := shape(torch.Linear(x, ly.q, nil), heads)
			k := shape(lay.multiway(x, lin(ly.k)), kvHeads)
			v := shape(lay.multiway(x, lin(ly.v)), kvHeads)
			q = q.Mul(cos).Add(rotateHalf(q).Mul(sin))
			k = k.Mul(cos).Add(rotateHalf(k).Mul(sin))
			k, v = repeat(k), repeat(v)
			w := q.Matmul(k.Transpose(2, 3)).DivScalar(scale).Add(mask)
			w = w.To(torch.Float32).Softmax(-1).To(dt)
			a := w.Matmul(v).Transpose(1, 2).Contiguous().Reshape([]int64{n, l, m.cfg.HiddenSize})
			h := prev.Add(torch.Linear(a, ly.o, nil))
			x = lay.multiway(h, rms(ly.ln2))
			g := torch.Linear(x, ly.gate, nil).Silu().Mul(torch.Linear(x, ly.up, nil))
			return h.Add(torch.Linear(g, ly.dn, nil))
		}, in)
		tap(fmt.Sprintf("llama_layer_%d", i), h)
	}
	out := torch.Then(h, func(h *torch.Tensor) *torch.Tensor { return torch.RMSNorm(h, m.norm, eps) }, in)
	tap("llama_norm", out)
	return out
}
