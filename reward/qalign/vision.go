package qalign

import (
	"fmt"
	"math"

	"github.com/dp2osr/dp2o/torch"
	"github.com/dp2osr/dp2o/torch/nn"
)

// Tap receives named intermediates of the forward pass (the fixture's
// stage names: "vision_embeddings", "vision_layer_<i>", "vision_tokens",
// "abstractor_layer_<i>", "visual_tokens", "inputs_embeds",
// "modality_indicators", "llama_layer_<i>", "llama_norm", "last_logits",
// "level_logits", "level_probs", "score"); t is valid only during the call.
type Tap func(name string, t *torch.Tensor)

// vision is mPLUG-Owl2's MplugOwlVisionModel (ViT-L/14 at 448 in the
// published model): a bias-free patch convolution, class token, learned
// positions, pre-LN, pre-norm layers with a fused per-head [q,k,v]
// projection and QuickGELU, post-LN.
type vision struct {
	cfg           VisionConfig
	patch, cls    *torch.Tensor
	pos           *torch.Tensor
	preLN, postLN *nn.LayerNorm
	layers        []*visionLayer
	tokens        int64
}

type visionLayer struct {
	ln1, ln2 *nn.LayerNorm
	qkv      *nn.Linear
	dense    *nn.Linear
	fc1, fc2 *nn.Linear
}

func newVision(b *nn.Builder, c VisionConfig) *vision {
	g := c.ImageSize / c.PatchSize
	v := &vision{cfg: c, tokens: g*g + 1}
	e := b.Sub("embeddings")
	v.cls = e.Get("cls_token", 1, 1, c.HiddenSize)
	v.patch = e.Get("patch_embed.weight", c.HiddenSize, c.NumChannels, c.PatchSize, c.PatchSize)
	v.pos = e.Get("position_embedding", 1, v.tokens, c.HiddenSize)
	v.preLN = nn.NewLayerNorm(e.Sub("pre_layernorm"), c.HiddenSize, c.LayerNormEps, true)
	for i := 0; i < c.NumHiddenLayers; i++ {
		lb := b.Sub("encoder.layers").SubI(i)
		v.layers = append(v.layers, &visionLayer{
			ln1:   nn.NewLayerNorm(lb.Sub("input_layernorm"), c.HiddenSize, c.LayerNormEps, true),
			qkv:   nn.NewLinear(lb.Sub("self_attn.query_key_value"), c.HiddenSize, 3*c.HiddenSize, true),
			dense: nn.NewLinear(lb.Sub("self_attn.dense"), c.HiddenSize, c.HiddenSize, true),
			ln2:   nn.NewLayerNorm(lb.Sub("post_attention_layernorm"), c.HiddenSize, c.LayerNormEps, true),
			fc1:   nn.NewLinear(lb.Sub("mlp.fc1"), c.HiddenSize, c.IntermediateSize, true),
			fc2:   nn.NewLinear(lb.Sub("mlp.fc2"), c.IntermediateSize, c.HiddenSize, true),
		})
	}
	v.postLN = nn.NewLayerNorm(b.Sub("post_layernorm"), c.HiddenSize, c.LayerNormEps, true)
	return v
}

// forward maps pixel_values (B,3,S,S) to the last hidden state (B,T,C).
// Each layer runs through torch.Then, so that memory holds one layer's
// intermediates (the attention scores the largest), not every layer's.
func (v *vision) forward(x *torch.Tensor, tap Tap) *torch.Tensor {
	h := torch.Scoped(func() *torch.Tensor { return v.embed(x) })
	tap("vision_embeddings", h)
	heads := v.cfg.NumAttentionHeads
	scale := math.Pow(float64(h.Size(2)/heads), -0.5)
	for i, l := range v.layers {
		h = torch.Then(h, func(h *torch.Tensor) *torch.Tensor { return l.forward(h, heads, scale) })
		tap(fmt.Sprintf("vision_layer_%d", i), h)
	}
	out := torch.Then(h, v.postLN.Forward)
	tap("vision_tokens", out)
	return out
}

// embed is the patch convolution, class token, positions and pre-LN:
// (B,3,S,S) to (B,T,C).
func (v *vision) embed(x *torch.Tensor) *torch.Tensor {
	p := v.cfg.PatchSize
	dt := x.DType()
	e := torch.Conv2d(x, v.patch, nil, []int64{p, p}, []int64{0, 0}, []int64{1, 1}, 1)
	n := e.Size(0)
	e = e.Flatten(2, -1).Transpose(1, 2)
	cls := v.cls.Expand([]int64{n, 1, -1}).To(dt)
	e = torch.Cat([]*torch.Tensor{cls, e}, 1)
	if e.Size(1) != v.tokens {
		torch.Errorf("qalign vision", "%d tokens from a %v input, the position table has %d (want %dx%d pixels)",
			e.Size(1), x.Shape(), v.tokens, v.cfg.ImageSize, v.cfg.ImageSize)
	}
	return v.preLN.Forward(e.Add(v.pos.To(dt)))
}

// forward is one pre-norm layer: attention with the fused per-head
// [q,k,v] projection, then the QuickGELU MLP, each with its residual.
func (l *visionLayer) forward(h *torch.Tensor, heads int64, scale float64) *torch.Tensor {
	n, t, c := h.Size(0), h.Size(1), h.Size(2)
	hd := c / heads
	qkv := l.qkv.Forward(l.ln1.Forward(h)).Reshape([]int64{n, t, heads, 3, hd}).Permute([]int64{3, 0, 2, 1, 4})
	q, k, val := qkv.Select(0, 0), qkv.Select(0, 1), qkv.Select(0, 2)
	// The reference's order, softmax(q·kᵀ·scale)·v; on the CPU without
	// autograd, a block of query rows at a time (torch.SetAttentionChunkBytes):
	// the scores stay in cache and are never whole, whatever the batch.
	a := torch.ScaledDotProductAttention(q, k, val, torch.AttentionOpts{Scale: scale, Math: true}).
		Permute([]int64{0, 2, 1, 3}).Reshape([]int64{n, t, c})
	h = l.dense.Forward(a).Add(h)
	m := l.fc1.Forward(l.ln2.Forward(h))
	m = m.Mul(m.MulScalar(1.702).Sigmoid())
	return l.fc2.Forward(m).Add(h)
}

// exactScale reports whether multiplying by s is exact in binary floating
// point (s a power of two), so that it may move across a matmul without
// changing any rounding.
func exactScale(s float64) bool {
	frac, _ := math.Frexp(s)
	return frac == 0.5
}
