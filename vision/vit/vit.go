// Package vit is timm's VisionTransformer (vit_base_patch8_224 and
// relatives) for feature extraction: patch embedding, class token,
// learned positional embedding, pre-LN blocks, with the output of every
// block available. Keys are timm's: patch_embed.proj, cls_token,
// pos_embed, blocks.<i>.{norm1,attn.qkv,attn.proj,norm2,mlp.fc1,mlp.fc2},
// norm, head.
package vit

import (
	"fmt"
	"math"
	"slices"

	"github.com/dp2osr/dp2o/torch"
	"github.com/dp2osr/dp2o/torch/nn"
)

// Config is a ViT.
type Config struct {
	ImgSize, Patch int64
	Dim, Heads     int64
	Depth          int
	MLPHidden      int64
	NumClasses     int64   // classifier head size (loaded, not run)
	Eps            float64 // LayerNorm eps (1e-6 in timm's ViTs)
}

// B8 is timm's vit_base_patch8_224.
var B8 = Config{ImgSize: 224, Patch: 8, Dim: 768, Heads: 12, Depth: 12, MLPHidden: 3072, NumClasses: 1000, Eps: 1e-6}

// Tokens is the number of tokens with the class token.
func (c Config) Tokens() int64 { g := c.ImgSize / c.Patch; return g*g + 1 }

type block struct {
	norm1, norm2 *nn.LayerNorm
	qkv, proj    *nn.Linear
	fc1, fc2     *nn.Linear
	heads        int64
}

// ViT is the network.
type ViT struct {
	cfg      Config
	patchW   *torch.Tensor
	patchB   *torch.Tensor
	clsToken *torch.Tensor
	posEmbed *torch.Tensor
	blocks   []*block
	norm     *nn.LayerNorm
	head     *nn.Linear
}

// New builds the network from b.
func New(b *nn.Builder, cfg Config) (*ViT, error) {
	if cfg.Heads <= 0 || cfg.Dim%cfg.Heads != 0 || cfg.Patch <= 0 {
		return nil, fmt.Errorf("vit: bad config %+v", cfg)
	}
	v := &ViT{
		cfg:      cfg,
		patchW:   b.Get("patch_embed.proj.weight", cfg.Dim, 3, cfg.Patch, cfg.Patch),
		patchB:   b.Get("patch_embed.proj.bias", cfg.Dim),
		clsToken: b.Get("cls_token", 1, 1, cfg.Dim),
		posEmbed: b.Get("pos_embed", 1, cfg.Tokens(), cfg.Dim),
		norm:     nn.NewLayerNorm(b.Sub("norm"), cfg.Dim, cfg.Eps, true),
		head:     nn.NewLinear(b.Sub("head"), cfg.Dim, cfg.NumClasses, true),
	}
	for i := 0; i < cfg.Depth; i++ {
		bb := b.Sub("blocks").SubI(i)
		v.blocks = append(v.blocks, &block{
			norm1: nn.NewLayerNorm(bb.Sub("norm1"), cfg.Dim, cfg.Eps, true),
			qkv:   nn.NewLinear(bb.Sub("attn.qkv"), cfg.Dim, 3*cfg.Dim, true),
			proj:  nn.NewLinear(bb.Sub("attn.proj"), cfg.Dim, cfg.Dim, true),
			norm2: nn.NewLayerNorm(bb.Sub("norm2"), cfg.Dim, cfg.Eps, true),
			fc1:   nn.NewLinear(bb.Sub("mlp.fc1"), cfg.Dim, cfg.MLPHidden, true),
			fc2:   nn.NewLinear(bb.Sub("mlp.fc2"), cfg.MLPHidden, cfg.Dim, true),
			heads: cfg.Heads,
		})
	}
	return v, nil
}

// FreeHead closes the classifier head and the final norm, for callers that
// only use block outputs (the builder's Params then hold closed tensors,
// which Close skips).
func (v *ViT) FreeHead() {
	for _, t := range []*torch.Tensor{v.norm.Weight, v.norm.Bias, v.head.Weight, v.head.Bias} {
		t.Close()
	}
}

// forward is timm's Block with its non-fused Attention: q·scale @ kᵀ,
// softmax, @ v; exact GELU MLP.
func (b *block) forward(x *torch.Tensor) *torch.Tensor {
	s := torch.NewScope() // the attention maps are large: free them per block
	defer s.Close()
	n, l, c := x.Size(0), x.Size(1), x.Size(2)
	hd := c / b.heads
	h := b.norm1.Forward(x)
	qkv := torch.FastLinear(h, b.qkv.Weight, b.qkv.Bias).Reshape([]int64{n, l, 3, b.heads, hd}).Permute([]int64{2, 0, 3, 1, 4})
	q, k, vv := qkv.Select(0, 0), qkv.Select(0, 1), qkv.Select(0, 2)
	scale := math.Pow(float64(hd), -0.5)
	var o *torch.Tensor
	if frac, _ := math.Frexp(scale); frac == 0.5 && q.DType() != torch.Float16 {
		// timm scales q before q·kᵀ; by a power of two that is the same as
		// scaling the scores (in float16 the unscaled scores could
		// overflow), so the math order of ScaledDotProductAttention gives
		// timm's result, and on the CPU without autograd computes it a
		// block of query rows at a time: never the whole (N,heads,L,L)
		// scores (MANIQA's 20 crops: 564 MiB, twice, a block).
		o = torch.ScaledDotProductAttention(q, k, vv, torch.AttentionOpts{Scale: scale, Math: true})
	} else {
		o = q.MulScalar(scale).Matmul(k.Transpose(-2, -1)).Softmax(-1).Matmul(vv)
	}
	o = o.Transpose(1, 2).Reshape([]int64{n, l, c})
	x = x.Add(torch.FastLinear(o, b.proj.Weight, b.proj.Bias))
	m := torch.FastLinear(torch.FastLinear(b.norm2.Forward(x), b.fc1.Weight, b.fc1.Bias).Gelu(), b.fc2.Weight, b.fc2.Bias)
	return s.Keep(x.Add(m))
}

// Tap receives the patch embedding ("patch_embed", (N, L, Dim)) and every
// block output ("blocks.<i>", with the class token); t is valid only
// during the call.
type Tap func(name string, t *torch.Tensor)

// Blocks runs the patch embedding and the first depth blocks on a
// normalised (N,3,ImgSize,ImgSize) batch and returns every block output
// (N, Tokens, Dim), class token first. The tensors belong to the caller's
// scope.
func (v *ViT) Blocks(x *torch.Tensor, depth int, tap Tap) []*torch.Tensor {
	want := make([]int, max(0, min(depth, len(v.blocks))))
	for i := range want {
		want[i] = i
	}
	return v.Features(x, want, tap)
}

// Features is Blocks for the outputs of the blocks in want only (0-based,
// in the order given; an index given twice gives the same tensor twice):
// it runs the blocks up to the last one wanted and frees every other
// block's output as soon as the next block has read it, so besides the
// wanted outputs only a block's input and output are alive while it runs.
// The tensors belong to the caller's scope.
func (v *ViT) Features(x *torch.Tensor, want []int, tap Tap) []*torch.Tensor {
	if tap == nil {
		tap = func(string, *torch.Tensor) {}
	}
	depth := 0
	for _, i := range want {
		if i < 0 || i >= len(v.blocks) {
			torch.Errorf("vit", "block %d of a %d-block ViT", i, len(v.blocks))
		}
		depth = max(depth, i+1)
	}
	p := v.cfg.Patch
	h := torch.Scoped(func() *torch.Tensor {
		h := torch.Conv2d(x, v.patchW, v.patchB, []int64{p, p}, []int64{0, 0}, []int64{1, 1}, 1)
		h = h.Flatten(2, -1).Transpose(1, 2)
		tap("patch_embed", h)
		n := h.Size(0)
		return torch.Cat([]*torch.Tensor{v.clsToken.Expand([]int64{n, -1, -1}), h}, 1).Add(v.posEmbed)
	})
	kept := map[int]*torch.Tensor{}
	for i := 0; i < depth; i++ {
		var keep []*torch.Tensor
		if i > 0 && slices.Contains(want, i-1) {
			keep = append(keep, h)
		}
		h = torch.Then(h, v.blocks[i].forward, keep...)
		tap(fmt.Sprintf("blocks.%d", i), h)
		if slices.Contains(want, i) {
			kept[i] = h
		}
	}
	if depth == 0 {
		h.Close() // the embedding: no block was asked for
	}
	out := make([]*torch.Tensor, len(want))
	for j, i := range want {
		out[j] = kept[i]
	}
	return out
}
