package swin

import (
	"fmt"

	"github.com/dp2osr/dp2o/torch"
	"github.com/dp2osr/dp2o/torch/nn"
)

// TapFunc receives named intermediates of a forward pass: "patch_embed",
// "layers.i.blocks.j", "layers.i" (after the stage's merging), "norm" and
// "output". The tensors are only valid during the call.
type TapFunc func(name string, t *torch.Tensor)

// Model is RAM's SwinTransformer: patch embedding, stages, final LayerNorm,
// and the output cat([mean over tokens, tokens], dim=1), (B, 1+L, C).
type Model struct {
	Config     Config
	PatchEmbed *PatchEmbed
	// AbsPosEmbed is absolute_pos_embed (1, L, embed), nil without ape.
	AbsPosEmbed *torch.Tensor
	Layers      []*Stage
	Norm        *nn.LayerNorm
	// Tap, when set, receives the intermediates.
	Tap TapFunc
}

// New builds the model from b (keys as in the official state dict, under
// b's prefix).
func New(b *nn.Builder, c Config) (*Model, error) {
	if err := c.Validate(); err != nil {
		return nil, err
	}
	m := &Model{Config: c,
		PatchEmbed: NewPatchEmbed(b.Sub("patch_embed"), c.ImageSize, c.PatchSize, c.InChans, c.EmbedDim, c.PatchNorm, c.LayerNormEps)}
	res := c.PatchesResolution()
	if c.APE {
		m.AbsPosEmbed = b.Get("absolute_pos_embed", 1, res*res, c.EmbedDim)
	}
	for i := range c.Depths {
		r := res >> i
		st, err := NewStage(b.Sub("layers").SubI(i), StageConfig{
			Dim: c.EmbedDim << i, Depth: c.Depths[i], Heads: c.NumHeads[i], Resolution: [2]int64{r, r},
			Window: c.WindowSize, MLPRatio: c.MLPRatio, QKVBias: c.QKVBias, QKScale: c.QKScale, Eps: c.LayerNormEps,
			Downsample: i < len(c.Depths)-1,
		})
		if err != nil {
			m.Close()
			return nil, fmt.Errorf("swin stage %d: %w", i, err)
		}
		m.Layers = append(m.Layers, st)
	}
	m.Norm = nn.NewLayerNorm(b.Sub("norm"), c.NumFeatures(), c.LayerNormEps, true)
	return m, nil
}

func (m *Model) tap(name string, t *torch.Tensor) {
	if m.Tap != nil {
		m.Tap(name, t)
	}
}

// Features runs the encoder up to the final LayerNorm: (B, L, C).
func (m *Model) Features(x *torch.Tensor) *torch.Tensor {
	s := torch.NewScope()
	defer s.Close()
	h := m.PatchEmbed.Forward(x)
	if m.AbsPosEmbed != nil {
		h = h.Add(m.AbsPosEmbed)
	}
	m.tap("patch_embed", h)
	for i, st := range m.Layers {
		for j, blk := range st.Blocks {
			next := blk.Forward(h)
			h.Close()
			h = next
			if m.Tap != nil {
				m.tap(fmt.Sprintf("layers.%d.blocks.%d", i, j), h)
			}
		}
		if st.Downsample != nil {
			next := st.Downsample.Forward(h)
			h.Close()
			h = next
		}
		if m.Tap != nil {
			m.tap(fmt.Sprintf("layers.%d", i), h)
		}
	}
	h = m.Norm.Forward(h)
	m.tap("norm", h)
	return s.Keep(h)
}

// Encode is Forward returning an error (a wrong input shape, a failing op)
// instead of panicking.
func (m *Model) Encode(x *torch.Tensor) (out *torch.Tensor, err error) {
	defer torch.Recover(&err)
	return m.Forward(x), nil
}

// Forward maps normalised images (B, 3, H, W) to RAM's image tokens
// (B, 1+L, C): the average-pooled token, then the L final tokens. Like every
// module's Forward it panics with a *torch.Error on bad input; Encode
// returns it.
func (m *Model) Forward(x *torch.Tensor) *torch.Tensor {
	s := torch.NewScope()
	defer s.Close()
	h := m.Features(x)
	// AdaptiveAvgPool1d(1) over the tokens, as nn.AdaptiveAvgPool1d runs it.
	cls := torch.AdaptiveAvgPool2d(h.Transpose(1, 2).Unsqueeze(2), []int64{1, 1}).SqueezeDim(2).Transpose(1, 2)
	out := torch.Cat([]*torch.Tensor{cls, h}, 1)
	m.tap("output", out)
	return s.Keep(out)
}

// Close frees the buffers (masks, position indices); the weights belong to
// the Params the builder returned.
func (m *Model) Close() {
	for _, st := range m.Layers {
		st.Close()
	}
}
