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
// Each layer runs in its own scope and the previous hidden state is freed
// after it, so that memory holds one layer's intermediates (the attention
// scores the largest), not every layer's, and the allocator reuses them.
func (v *vision) forward(x *torch.Tensor, tap Tap) *torch.Tensor {
	h := torch.Scoped(func() *torch.Tensor { return v.embed(x) })
	tap("vision_embeddings", h)
	heads := v.cfg.NumAttentionHeads
	scale := math.Pow(float64(h.Size(2)/heads), -0.5)
	for i, l := range v.layers {
		prev := h
		h = torch.Scoped(func() *torch.Tensor { return l.forward(prev, heads, scale) })
		prev.Close()
		tap(fmt.Sprintf("vision_layer_%d", i), h)
	}
	out := v.postLN.Forward(h)
	h.Close()
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
	a := attention(q, k, val, scale).Permute([]int64{0, 2, 1, 3}).Reshape([]int64{n, t, c})
	h = l.dense.Forward(a).Add(h)
	m := l.fc1.Forward(l.ln2.Forward(h))
	m = m.Mul(m.MulScalar(1.702).Sigmoid())
	return l.fc2.Forward(m).Add(h)
}

// cpuScoreBytes bounds the attention scores one slice holds on the CPU:
// 2 MiB, so that a slice's scores and probabilities fit a core's L2 cache
// (4 MiB here) between the two products and the softmax, and stay below
// glibc's mmap threshold, so the heap reuses them. A whole layer's scores
// (4 MB a head at 1025 tokens) went through memory twice and, past the
// threshold, were fresh pages faulted in on every layer. (1, 2 and 4 MiB
// time alike on the fixture model; 256 KiB is slower.)
var cpuScoreBytes int64 = 1 << 21

// attention is softmax(q·kᵀ·scale)·v over (B,H,T,D). On CUDA it is one
// batched product (the caching allocator reuses blocks). On the CPU it
// runs in slices whose scores fit cpuScoreBytes, each in its own scope:
// several whole images when they fit, else blocks of query rows of one
// image, all heads at once. Each score and output row is the same dot
// products as in one product, so memory for scores stays bounded whatever
// the batch (pyiqa, scoring one image at a time, holds one image's).
func attention(q, k, v *torch.Tensor, scale float64) *torch.Tensor {
	n, h, t := q.Size(0), q.Size(1), q.Size(2)
	rows := max(1, cpuScoreBytes/(k.Size(2)*int64(q.DType().Size()))) // score rows a slice may hold
	if q.Device().IsCUDA() || rows >= n*h*t {
		return attend(q, k, v, scale)
	}
	slice := func(i, ni, r, nr int64) *torch.Tensor {
		return torch.Scoped(func() *torch.Tensor {
			return attend(q.Narrow(0, i, ni).Narrow(2, r, nr), k.Narrow(0, i, ni), v.Narrow(0, i, ni), scale)
		})
	}
	var parts []*torch.Tensor
	if images := rows / (h * t); images >= 1 {
		for i := int64(0); i < n; i += images {
			parts = append(parts, slice(i, min(images, n-i), 0, t))
		}
		return torch.Cat(parts, 0)
	}
	block := max(1, rows/h) // query rows of all heads
	for i := int64(0); i < n; i++ {
		var blocks []*torch.Tensor
		for r := int64(0); r < t; r += block {
			blocks = append(blocks, slice(i, 1, r, min(block, t-r)))
		}
		parts = append(parts, torch.Cat(blocks, 2))
	}
	return torch.Cat(parts, 0)
}

// attend is softmax(q·kᵀ·scale)·v in one batched product.
func attend(q, k, v *torch.Tensor, scale float64) *torch.Tensor {
	var s *torch.Tensor
	if exactScale(scale) {
		// Scaling q by a power of two is exact: the same scores as scaling
		// q·kᵀ (the reference's order), with T·d multiplies instead of T².
		s = q.MulScalar(scale).Matmul(k.Transpose(-1, -2)).Softmax(-1)
	} else {
		s = q.Matmul(k.Transpose(-1, -2)).MulScalar(scale).Softmax(-1)
	}
	return s.Matmul(v)
}

// exactScale reports whether multiplying by s is exact in binary floating
// point (s a power of two), so that it may move across a matmul without
// changing any rounding.
func exactScale(s float64) bool {
	frac, _ := math.Frexp(s)
	return frac == 0.5
}
