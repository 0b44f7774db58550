package qalign

import (
	"fmt"
	"math"

	"github.com/dp2osr/dp2o/torch"
	"github.com/dp2osr/dp2o/torch/nn"
)

// abstractorLNEps is the eps of norm1, normk and norm2: nn.LayerNorm's
// default, not the config's layer_norm_eps (which only ffn_ln uses).
const abstractorLNEps = 1e-5

// abstractor is MplugOwlVisualAbstractorModel: learnable queries that
// cross-attend to themselves and the vision tokens (with fixed sin-cos
// positions on queries and keys), SwiGLU MLPs, then visual_fc and vit_eos.
type abstractor struct {
	cfg      AbstractorConfig
	queries  *torch.Tensor
	layers   []*abstractorLayer
	visualFC *nn.Linear
	vitEOS   *torch.Tensor
	// owned are the computed position buffers (checkpoints without them).
	owned []*torch.Tensor
}

type abstractorLayer struct {
	norm1, normk, norm2 *nn.LayerNorm
	query, key, value   *nn.Linear
	qPos, kPos          *torch.Tensor
	outProj             *nn.Linear
	w1, w2, w3          *nn.Linear
	ffnLN               *nn.LayerNorm
}

func newAbstractor(b *nn.Builder, c AbstractorConfig, llamaHidden int64) (*abstractor, error) {
	a := &abstractor{cfg: c}
	a.queries = b.Get("query_embeds", 1, c.NumLearnableQueries, c.HiddenSize)
	nk := c.GridSize*c.GridSize + 1
	var qPos, kPos *torch.Tensor
	for i := 0; i < c.NumHiddenLayers; i++ {
		lb := b.Sub("encoder.layers").SubI(i).Sub("crossattention")
		l := &abstractorLayer{
			norm1: nn.NewLayerNorm(lb.Sub("norm1"), c.HiddenSize, abstractorLNEps, true),
			normk: nn.NewLayerNorm(lb.Sub("normk"), c.HiddenSize, abstractorLNEps, true),
			query: nn.NewLinear(lb.Sub("attention.query"), c.HiddenSize, c.HiddenSize, true),
			key:   nn.NewLinear(lb.Sub("attention.key"), c.EncoderHiddenSize, c.HiddenSize, true),
			value: nn.NewLinear(lb.Sub("attention.value"), c.EncoderHiddenSize, c.HiddenSize, true),
		}
		ab := lb.Sub("attention")
		// Persistent buffers: a save_pretrained checkpoint has them,
		// Q-Align's converter does not. On the meta device (key checks)
		// they are requested like every key.
		if ab.Has("q_pos_embed") || b.Device().Type == torch.DeviceMeta {
			l.qPos = ab.Get("q_pos_embed", c.NumLearnableQueries, c.HiddenSize)
		}
		if ab.Has("k_pos_embed") || b.Device().Type == torch.DeviceMeta {
			l.kPos = ab.Get("k_pos_embed", nk, c.HiddenSize)
		}
		if l.qPos == nil || l.kPos == nil {
			if qPos == nil {
				var err error
				if qPos, kPos, err = positionBuffers(c, b.DType(), b.Device()); err != nil {
					return nil, err
				}
				a.owned = append(a.owned, qPos, kPos)
			}
			if l.qPos == nil {
				l.qPos = qPos
			}
			if l.kPos == nil {
				l.kPos = kPos
			}
		}
		ob := lb.Sub("output")
		l.outProj = nn.NewLinear(ob.Sub("out_proj"), c.HiddenSize, c.HiddenSize, true)
		l.norm2 = nn.NewLayerNorm(ob.Sub("norm2"), c.HiddenSize, abstractorLNEps, true)
		l.w1 = nn.NewLinear(ob.Sub("mlp.w1"), c.HiddenSize, c.IntermediateSize, true)
		l.w2 = nn.NewLinear(ob.Sub("mlp.w2"), c.IntermediateSize, c.HiddenSize, true)
		l.w3 = nn.NewLinear(ob.Sub("mlp.w3"), c.HiddenSize, c.IntermediateSize, true)
		l.ffnLN = nn.NewLayerNorm(ob.Sub("mlp.ffn_ln"), c.IntermediateSize, c.LayerNormEps, true)
		a.layers = append(a.layers, l)
	}
	a.visualFC = nn.NewLinear(b.Sub("visual_fc"), c.HiddenSize, llamaHidden, true)
	a.vitEOS = b.Get("vit_eos", 1, 1, llamaHidden)
	return a, nil
}

// positionBuffers computes q_pos_embed (1-D sin-cos of the query index)
// and k_pos_embed (a zero row for the class token, then the 2-D sin-cos of
// the patch grid) as mPLUG-Owl2 does in float32 numpy.
func positionBuffers(c AbstractorConfig, dt torch.DType, dev torch.Device) (q, k *torch.Tensor, err error) {
	d := int(c.HiddenSize)
	nq := int(c.NumLearnableQueries)
	qv := make([]float32, nq*d)
	for p := 0; p < nq; p++ {
		sincos1D(qv[p*d:(p+1)*d], d, float32(p))
	}
	g := int(c.GridSize)
	kv := make([]float32, (g*g+1)*d)
	h := d / 2
	for r := 0; r < g; r++ {
		for col := 0; col < g; col++ {
			row := kv[(1+r*g+col)*d:]
			// np.meshgrid(w, h) puts the column index first: emb_h is of
			// the column, emb_w of the row.
			sincos1D(row[:h], h, float32(col))
			sincos1D(row[h:d], h, float32(r))
		}
	}
	err = torch.Try(func() {
		s := torch.NewScope()
		defer s.Close()
		q = s.Keep(torch.FromSlice(qv, int64(nq), int64(d)).To(dt).ToDevice(dev))
		k = s.Keep(torch.FromSlice(kv, int64(g*g+1), int64(d)).To(dt).ToDevice(dev))
	})
	if err != nil {
		return nil, nil, err
	}
	return torch.Unscope(q), torch.Unscope(k), nil
}

// sincos1D writes get_1d_sincos_pos_embed_from_grid(dim, [pos]) into out:
// omega_i = 1/10000^(i/(dim/2)) in float32, then [sin(pos·ω), cos(pos·ω)].
func sincos1D(out []float32, dim int, pos float32) {
	half := dim / 2
	for i := 0; i < half; i++ {
		o := float32(i) / float32(float64(dim)/2)
		omega := float32(1) / float32(math.Pow(10000, float64(o)))
		x := pos * omega
		out[i] = float32(math.Sin(float64(x)))
		out[half+i] = float32(math.Cos(float64(x)))
	}
}

// forward maps the vision tokens (B,T,C) to the visual tokens (B,Q+1,H),
// a layer at a time through torch.Then.
func (a *abstractor) forward(vis *torch.Tensor, tap Tap) *torch.Tensor {
	n := vis.Size(0)
	dt := vis.DType()
	heads := a.cfg.NumAttentionHeads
	c := a.cfg.HiddenSize
	hd := c / heads
	nq := a.cfg.NumLearnableQueries
	q := a.queries.Expand([]int64{n, -1, -1}) // a new handle: Then closes it, not the weight
	split := func(x *torch.Tensor) *torch.Tensor {
		return x.View([]int64{n, x.Size(1), heads, hd}).Permute([]int64{0, 2, 1, 3})
	}
	for i, l := range a.layers {
		q = torch.Then(q, func(prev *torch.Tensor) *torch.Tensor {
			qn := l.norm1.Forward(prev)
			kn := l.normk.Forward(vis)
			kv := torch.Cat([]*torch.Tensor{qn, kn}, 1)
			qkPos := torch.Cat([]*torch.Tensor{l.qPos, l.kPos}, 0).Unsqueeze(0).To(dt)
			K := split(l.key.Forward(kv.Add(qkPos)))
			V := split(l.value.Forward(kv))
			Q := split(l.query.Forward(qn.Add(l.qPos.Unsqueeze(0).To(dt))))
			var s *torch.Tensor
			if d := math.Sqrt(float64(hd)); exactScale(1 / d) {
				s = Q.MulScalar(1 / d).Matmul(K.Transpose(-1, -2)).Softmax(-1) // exact: see exactScale
			} else {
				s = Q.Matmul(K.Transpose(-1, -2)).DivScalar(d).Softmax(-1)
			}
			ctx := s.Matmul(V).Permute([]int64{0, 2, 1, 3}).Contiguous().View([]int64{n, nq, c})
			q := qn.Add(l.outProj.Forward(ctx))
			x := l.norm2.Forward(q)
			m := l.w1.Forward(x).Silu().Mul(l.w3.Forward(x))
			return q.Add(l.w2.Forward(l.ffnLN.Forward(m)))
		})
		tap(fmt.Sprintf("abstractor_layer_%d", i), q)
	}
	out := a.visualFC.Forward(q)
	out = torch.Cat([]*torch.Tensor{out, a.vitEOS.Expand([]int64{n, -1, -1}).To(out.DType())}, 1)
	tap("visual_tokens", out)
	return out
}

func (a *abstractor) close() {
	for _, t := range a.owned {
		t.Close()
	}
	a.owned = nil
}
