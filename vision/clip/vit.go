package clip

import (
	"fmt"

	"github.com/dp2osr/dp2o/torch"
	"github.com/dp2osr/dp2o/torch/nn"
)

// ViTConfig is CLIP's VisionTransformer image encoder.
type ViTConfig struct {
	InputResolution int64 // 224: the positional embedding covers (224/Patch)²+1 tokens
	Patch           int64
	Width           int64
	Layers          int
	Heads           int64 // Width/64
	OutputDim       int64
}

// ViTB32 is CLIP ViT-B/32's image encoder.
var ViTB32 = ViTConfig{InputResolution: 224, Patch: 32, Width: 768, Layers: 12, Heads: 12, OutputDim: 512}

// ViT is CLIP's VisionTransformer as A-FINE's fine-tuned copy runs it
// (pyiqa's afineclip_model): any input size that is a multiple of the
// patch, the positional embedding resampled along the token axis.
type ViT struct {
	cfg                 ViTConfig
	conv1               *torch.Tensor
	ClassEmbedding      *torch.Tensor
	PositionalEmbedding *torch.Tensor
	lnPre, lnPost       *nn.LayerNorm
	blocks              []*resBlock
	Proj                *torch.Tensor
}

// NewViT builds the encoder from b (the "visual" prefix of a CLIP state
// dict).
func NewViT(b *nn.Builder, cfg ViTConfig) (*ViT, error) {
	if cfg.Patch <= 0 || cfg.Heads <= 0 || cfg.Width%cfg.Heads != 0 {
		return nil, fmt.Errorf("clip: bad ViT config %+v", cfg)
	}
	g := cfg.InputResolution / cfg.Patch
	v := &ViT{
		cfg:                 cfg,
		conv1:               b.Get("conv1.weight", cfg.Width, 3, cfg.Patch, cfg.Patch),
		ClassEmbedding:      b.Get("class_embedding", cfg.Width),
		PositionalEmbedding: b.Get("positional_embedding", g*g+1, cfg.Width),
		lnPre:               nn.NewLayerNorm(b.Sub("ln_pre"), cfg.Width, 1e-5, true),
		lnPost:              nn.NewLayerNorm(b.Sub("ln_post"), cfg.Width, 1e-5, true),
		Proj:                b.Get("proj", cfg.Width, cfg.OutputDim),
	}
	for i := 0; i < cfg.Layers; i++ {
		v.blocks = append(v.blocks, newResBlock(b.Sub("transformer.resblocks").SubI(i), cfg.Width, cfg.Heads))
	}
	return v, nil
}

// ViTTap receives named intermediates of Forward ("conv1",
// "pos_embedding_resized", "ln_pre_in", "block<i>" (tokens without cls,
// NLD), "cls"); t is valid only during the call.
type ViTTap func(name string, t *torch.Tensor)

// Forward encodes a normalised (N,3,H,W) batch (H and W multiples of the
// patch) and returns ln_post of the class token (N, Width; proj is not
// applied, as in A-FINE) and the tokens after every block without the
// class token (N, HW/P², Width). The tensors belong to the caller's scope.
func (v *ViT) Forward(x *torch.Tensor, tap ViTTap) (*torch.Tensor, []*torch.Tensor) {
	if tap == nil {
		tap = func(string, *torch.Tensor) {}
	}
	x = torch.Scoped(func() *torch.Tensor { return v.embed(x, tap) })
	feats := make([]*torch.Tensor, 0, len(v.blocks))
	for i, b := range v.blocks {
		// Frees the embedding; a block output's storage stays with its view in feats.
		x = torch.Then(x, func(x *torch.Tensor) *torch.Tensor { return b.forward(x, nil) })
		h := x.Permute([]int64{1, 0, 2})
		h = h.Narrow(1, 1, h.Size(1)-1)
		tap(fmt.Sprintf("block%d", i), h)
		feats = append(feats, h)
	}
	c := v.lnPost.Forward(x.Permute([]int64{1, 0, 2}).Select(1, 0))
	tap("cls", c)
	return c, feats
}

// embed is the patch convolution, class token, resampled positional
// embedding and ln_pre: (N,3,H,W) to LND tokens.
func (v *ViT) embed(x *torch.Tensor, tap ViTTap) *torch.Tensor {
	p := v.cfg.Patch
	x = torch.Conv2d(x, v.conv1, nil, []int64{p, p}, []int64{0, 0}, []int64{1, 1}, 1)
	tap("conv1", x)
	n, w := x.Size(0), x.Size(1)
	x = x.Reshape([]int64{n, w, -1}).Permute([]int64{0, 2, 1})
	cls := v.ClassEmbedding.To(x.DType()).Add(torch.Zeros([]int64{n, 1, w}, x.DType(), x.Device()))
	x = torch.Cat([]*torch.Tensor{cls, x}, 1)
	// F.interpolate of the (1, 1, L0, W) table to (L, W), bicubic: a 1-D
	// resampling along the tokens (the identity at the native size).
	pe := v.PositionalEmbedding.Unsqueeze(0).Unsqueeze(0).
		Interpolate([]int64{x.Size(1), v.PositionalEmbedding.Size(1)}, torch.Bicubic, false, false).SqueezeDim(0).SqueezeDim(0)
	tap("pos_embedding_resized", pe)
	x = x.Add(pe.To(x.DType()))
	tap("ln_pre_in", x)
	return v.lnPre.Forward(x).Permute([]int64{1, 0, 2})
}

// Patch is the patch size: inputs must be multiples of it.
func (v *ViT) Patch() int64 { return v.cfg.Patch }
