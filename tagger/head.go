package tagger

import (
	"fmt"
	"math"

	"github.com/dp2osr/dp2o/torch"
	"github.com/dp2osr/dp2o/torch/nn"
)

// crossLayer is one BertLayer of the tagging head in mode 'tagging': the
// cross-attention (its self-attention was deleted), then the feed-forward.
// Keys crossattention.self.{query,key,value}, crossattention.output.{dense,
// LayerNorm}, intermediate.dense, output.{dense,LayerNorm}.
type crossLayer struct {
	query, key, value, attnOut *nn.Linear
	attnNorm                   *nn.LayerNorm
	inter, out                 *nn.Linear
	outNorm                    *nn.LayerNorm
	act                        nn.Activation
	heads                      int64
}

func newCrossLayer(b *nn.Builder, c HeadConfig) (*crossLayer, error) {
	act, err := nn.ActivationByName(c.HiddenAct)
	if err != nil {
		return nil, fmt.Errorf("q2l config: %w", err)
	}
	ca := b.Sub("crossattention")
	return &crossLayer{
		query:    nn.NewLinear(ca.Sub("self").Sub("query"), c.HiddenSize, c.HiddenSize, true),
		key:      nn.NewLinear(ca.Sub("self").Sub("key"), c.EncoderWidth, c.HiddenSize, true),
		value:    nn.NewLinear(ca.Sub("self").Sub("value"), c.EncoderWidth, c.HiddenSize, true),
		attnOut:  nn.NewLinear(ca.Sub("output").Sub("dense"), c.HiddenSize, c.HiddenSize, true),
		attnNorm: nn.NewLayerNorm(ca.Sub("output").Sub("LayerNorm"), c.HiddenSize, c.LayerNormEps, true),
		inter:    nn.NewLinear(b.Sub("intermediate").Sub("dense"), c.HiddenSize, c.IntermediateSize, true),
		out:      nn.NewLinear(b.Sub("output").Sub("dense"), c.IntermediateSize, c.HiddenSize, true),
		outNorm:  nn.NewLayerNorm(b.Sub("output").Sub("LayerNorm"), c.HiddenSize, c.LayerNormEps, true),
		act:      act,
		heads:    c.NumAttentionHeads,
	}, nil
}

func linear(l *nn.Linear, x *torch.Tensor) *torch.Tensor {
	return torch.FastLinear(x, l.Weight, l.Bias)
}

// split is transpose_for_scores: (B, L, H·d) → (B, H, L, d).
func (l *crossLayer) split(x *torch.Tensor) *torch.Tensor {
	b, n, c := x.Size(0), x.Size(1), x.Size(2)
	return x.View([]int64{b, n, l.heads, c / l.heads}).Permute([]int64{0, 2, 1, 3})
}

// forward runs the layer on queries h (B, L, hidden) against the image
// tokens img (B, S, encoder_width). q, when not nil, is query(h) computed
// beforehand. tap receives the output after the cross-attention block.
func (l *crossLayer) forward(h, q, img *torch.Tensor, tap func(*torch.Tensor)) *torch.Tensor {
	s := torch.NewScope()
	defer s.Close()
	if q == nil {
		q = linear(l.query, h)
	}
	k := l.split(linear(l.key, img))
	v := l.split(linear(l.value, img))
	qh := l.split(q)
	d := q.Size(2) / l.heads
	// BERT scales after the product; the all-ones encoder mask inverts to
	// zeros and changes nothing.
	scores := qh.Matmul(k.Transpose(-1, -2)).DivScalar(math.Sqrt(float64(d)))
	probs := scores.Softmax(-1)
	ctx := probs.Matmul(v).Permute([]int64{0, 2, 1, 3}).Contiguous()
	ctx = ctx.View([]int64{ctx.Size(0), ctx.Size(1), -1})
	a := l.attnNorm.Forward(linear(l.attnOut, ctx).Add(h))
	if tap != nil {
		tap(a)
	}
	inter := l.act(linear(l.inter, a))
	return s.Keep(l.outNorm.Forward(linear(l.out, inter).Add(a)))
}

// Head is RAM's image-tag recognition decoder: label_embed through
// wordvec_proj and ReLU gives one query per tag; the tagging_head BERT
// layers attend from the queries to the image tokens; fc gives one logit
// per tag.
type Head struct {
	LabelEmbed  *torch.Tensor // (classes, 512)
	WordvecProj *nn.Linear
	layers      []*crossLayer
	FC          *nn.Linear
	// label and q0 are the image-independent part, computed by Prepare:
	// relu(wordvec_proj(label_embed)) (1, classes, hidden) and the first
	// layer's query projection of it.
	label, q0 *torch.Tensor
}

// NewHead takes label_embed, wordvec_proj.*, tagging_head.encoder.layer.*
// and fc.* from b.
func NewHead(b *nn.Builder, c HeadConfig, classes int64) (*Head, error) {
	h := &Head{
		LabelEmbed:  b.Get("label_embed", classes, 512),
		WordvecProj: nn.NewLinear(b.Sub("wordvec_proj"), 512, c.HiddenSize, true),
		FC:          nn.NewLinear(b.Sub("fc"), c.HiddenSize, 1, true),
	}
	for i := int64(0); i < c.NumHiddenLayers; i++ {
		l, err := newCrossLayer(b.Sub("tagging_head").Sub("encoder").Sub("layer").SubI(int(i)), c)
		if err != nil {
			return nil, err
		}
		h.layers = append(h.layers, l)
	}
	return h, nil
}

// Prepare computes the image-independent queries once (after the weights,
// LoRA included, are final). Forward calls it when needed.
func (h *Head) Prepare() {
	h.release()
	torch.NoGrad(func() {
		h.label = torch.Unscope(torch.Scoped(func() *torch.Tensor {
			return linear(h.WordvecProj, h.LabelEmbed).Relu().Unsqueeze(0)
		}))
		h.q0 = torch.Unscope(linear(h.layers[0].query, h.label))
	})
}

func (h *Head) release() {
	if h.label != nil {
		h.label.Close()
		h.q0.Close()
		h.label, h.q0 = nil, nil
	}
}

// Close frees the prepared queries.
func (h *Head) Close() { h.release() }

// Forward maps image tokens (B, S, 512) to logits (B, classes). tap
// receives "label_feat", "tagging_head.layer.<i>.crossattention" and
// "tagging_head.layer.<i>".
func (h *Head) Forward(img *torch.Tensor, tap func(string, *torch.Tensor)) *torch.Tensor {
	if h.label == nil {
		h.Prepare()
	}
	s := torch.NewScope()
	defer s.Close()
	bsz := img.Size(0)
	x := h.label.Expand([]int64{bsz, -1, -1})
	q := h.q0.Expand([]int64{bsz, -1, -1})
	if tap != nil {
		tap("label_feat", x)
	}
	for i, l := range h.layers {
		var t func(*torch.Tensor)
		if tap != nil {
			name := fmt.Sprintf("tagging_head.layer.%d", i)
			t = func(a *torch.Tensor) { tap(name+".crossattention", a) }
		}
		x = l.forward(x, q, img, t)
		q = nil
		if tap != nil {
			tap(fmt.Sprintf("tagging_head.layer.%d", i), x)
		}
	}
	return s.Keep(linear(h.FC, x).SqueezeDim(-1))
}
