package clip

import (
	"fmt"
	"math"

	"github.com/dp2osr/dp2o/torch"
	"github.com/dp2osr/dp2o/torch/nn"
)

// TextConfig is CLIP's text transformer.
type TextConfig struct {
	ContextLength int64 // 77
	VocabSize     int64 // 49408
	Width         int64 // 512 for RN50 and ViT-B/32
	Heads         int64
	Layers        int
	EmbedDim      int64 // text_projection output (the joint embedding)
}

// RN50Text is the text tower of CLIP RN50.
var RN50Text = TextConfig{ContextLength: 77, VocabSize: 49408, Width: 512, Heads: 8, Layers: 12, EmbedDim: 1024}

// resBlock is CLIP's ResidualAttentionBlock (pre-LN, causal mask,
// QuickGELU MLP).
type resBlock struct {
	attn     *nn.MultiheadAttention
	ln1, ln2 *nn.LayerNorm
	fc, proj *nn.Linear
}

// Text is CLIP's text encoder (token embedding, positional embedding,
// transformer, ln_final, text_projection).
type Text struct {
	cfg                 TextConfig
	TokenEmbedding      *nn.Embedding
	PositionalEmbedding *torch.Tensor
	blocks              []*resBlock
	lnFinal             *nn.LayerNorm
	Projection          *torch.Tensor // (Width, EmbedDim), right-multiplied
}

// NewText builds the text encoder from b (the root of a CLIP state dict).
func NewText(b *nn.Builder, cfg TextConfig) (*Text, error) {
	if cfg.Heads <= 0 || cfg.Width%cfg.Heads != 0 {
		return nil, fmt.Errorf("clip: bad text config %+v", cfg)
	}
	t := &Text{
		cfg:                 cfg,
		TokenEmbedding:      nn.NewEmbedding(b.Sub("token_embedding"), cfg.VocabSize, cfg.Width),
		PositionalEmbedding: b.Get("positional_embedding", cfg.ContextLength, cfg.Width),
		lnFinal:             nn.NewLayerNorm(b.Sub("ln_final"), cfg.Width, 1e-5, true),
		Projection:          b.Get("text_projection", cfg.Width, cfg.EmbedDim),
	}
	for i := 0; i < cfg.Layers; i++ {
		t.blocks = append(t.blocks, newResBlock(b.Sub("transformer.resblocks").SubI(i), cfg.Width, cfg.Heads))
	}
	return t, nil
}

func newResBlock(rb *nn.Builder, width, heads int64) *resBlock {
	return &resBlock{
		attn: nn.NewMultiheadAttention(rb.Sub("attn"), width, heads),
		ln1:  nn.NewLayerNorm(rb.Sub("ln_1"), width, 1e-5, true),
		ln2:  nn.NewLayerNorm(rb.Sub("ln_2"), width, 1e-5, true),
		fc:   nn.NewLinear(rb.Sub("mlp.c_fc"), width, 4*width, true),
		proj: nn.NewLinear(rb.Sub("mlp.c_proj"), 4*width, width, true),
	}
}

// forward is x + attn(ln_1(x)) then x + mlp(ln_2(x)) on LND tokens; mask
// may be nil. Only the output outlives the call (in the caller's scope).
func (b *resBlock) forward(x, mask *torch.Tensor) *torch.Tensor {
	s := torch.NewScope()
	defer s.Close()
	h := b.ln1.Forward(x)
	x = x.Add(b.attn.Forward(h, h, h, mask))
	return s.Keep(x.Add(b.proj.Forward(quickGELU(b.fc.Forward(b.ln2.Forward(x))))))
}

// params lists the block's weights.
func (b *resBlock) params() []*torch.Tensor {
	return []*torch.Tensor{b.attn.InProjWeight, b.attn.InProjBias, b.attn.OutProj.Weight, b.attn.OutProj.Bias,
		b.ln1.Weight, b.ln1.Bias, b.ln2.Weight, b.ln2.Bias, b.fc.Weight, b.fc.Bias, b.proj.Weight, b.proj.Bias}
}

// Free closes the text tower's weights, for models whose checkpoint holds
// the tower but never run it (the builder's Params then hold closed
// tensors, which Close skips).
func (t *Text) Free() {
	ts := []*torch.Tensor{t.TokenEmbedding.Weight, t.PositionalEmbedding, t.lnFinal.Weight, t.lnFinal.Bias, t.Projection}
	for _, b := range t.blocks {
		ts = append(ts, b.params()...)
	}
	for _, x := range ts {
		x.Close()
	}
}

// quickGELU is x·sigmoid(1.702·x).
func quickGELU(x *torch.Tensor) *torch.Tensor { return x.Mul(x.MulScalar(1.702).Sigmoid()) }

// causalMask is CLIP's build_attention_mask: −inf above the diagonal, 0
// elsewhere (n, n).
func causalMask(n int64, dt torch.DType, dev torch.Device) *torch.Tensor {
	return torch.Full([]int64{n, n}, math.Inf(-1), dt, dev).Triu(1)
}

// Encode runs prompt embeddings (N, L, Width) (token embeddings, maybe with
// learned context spliced in) through the transformer and returns the
// projected features at the rows eot (N int64 indices: the EOT position of
// each prompt), (N, EmbedDim). The result belongs to the caller's scope.
func (t *Text) Encode(emb, eot *torch.Tensor) *torch.Tensor {
	x := torch.Scoped(func() *torch.Tensor { return emb.Add(t.PositionalEmbedding).Permute([]int64{1, 0, 2}) }) // LND
	mask := causalMask(x.Size(0), x.DType(), x.Device())
	for _, b := range t.blocks {
		x = torch.Then(x, func(x *torch.Tensor) *torch.Tensor { return b.forward(x, mask) })
	}
	x = t.lnFinal.Forward(x.Permute([]int64{1, 0, 2}))
	n := x.Size(0)
	rows := make([]*torch.Tensor, n)
	ids := eot.ToDevice(torch.CPU).Int64s()
	for i := int64(0); i < n; i++ {
		rows[i] = x.Select(0, i).Select(0, ids[i])
	}
	return torch.Stack(rows, 0).Matmul(t.Projection)
}
