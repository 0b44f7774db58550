package swin

import (
	"github.com/dp2osr/dp2o/torch"
	"github.com/dp2osr/dp2o/torch/nn"
)

// PatchEmbed is Conv2d(in, embed, k=patch, s=patch) → flatten → transpose →
// optional LayerNorm (keys proj, norm).
type PatchEmbed struct {
	Proj *nn.Conv2d
	Norm *nn.LayerNorm // nil without patch_norm
	// Image is the input size the model was built for (H = W).
	Image int64
}

// NewPatchEmbed takes the patch embedding's weights.
func NewPatchEmbed(b *nn.Builder, image, patch, in, embed int64, norm bool, eps float64) *PatchEmbed {
	p := &PatchEmbed{Proj: nn.NewConv2d(b.Sub("proj"), in, embed, patch, nn.Conv2dConfig{Stride: patch}), Image: image}
	if norm {
		p.Norm = nn.NewLayerNorm(b.Sub("norm"), embed, eps, true)
	}
	return p
}

// Forward maps images (B, C, H, W) to tokens (B, H/p·W/p, embed).
func (p *PatchEmbed) Forward(x *torch.Tensor) *torch.Tensor {
	if x.Dim() != 4 || x.Size(2) != p.Image || x.Size(3) != p.Image {
		torch.Errorf("swin patch_embed", "input %v does not match the model's %d×%d images", x.Shape(), p.Image, p.Image)
	}
	s := torch.NewScope()
	defer s.Close()
	y := p.Proj.Forward(x).Flatten(2, -1).Transpose(1, 2)
	if p.Norm != nil {
		y = p.Norm.Forward(y)
	}
	return s.Keep(y)
}

// PatchMerging halves the grid and doubles the channels (keys norm,
// reduction): the 2×2 neighbours are concatenated in the official order
// x[0::2, 0::2], x[1::2, 0::2], x[0::2, 1::2], x[1::2, 1::2] (row first),
// then LayerNorm(4C) and Linear(4C, 2C, no bias).
type PatchMerging struct {
	Norm      *nn.LayerNorm
	Reduction *nn.Linear
	H, W      int64
}

// NewPatchMerging takes the weights of a merging over a (h, w) grid of dim
// channels.
func NewPatchMerging(b *nn.Builder, h, w, dim int64, eps float64) *PatchMerging {
	return &PatchMerging{
		Norm:      nn.NewLayerNorm(b.Sub("norm"), 4*dim, eps, true),
		Reduction: nn.NewLinear(b.Sub("reduction"), 4*dim, 2*dim, false),
		H:         h,
		W:         w,
	}
}

// Forward maps (B, H·W, C) to (B, H/2·W/2, 2C).
func (m *PatchMerging) Forward(x *torch.Tensor) *torch.Tensor {
	s := torch.NewScope()
	defer s.Close()
	b, l, c := x.Size(0), x.Size(1), x.Size(2)
	if l != m.H*m.W {
		torch.Errorf("swin patch merging", "input has %d tokens, the grid is %d×%d", l, m.H, m.W)
	}
	v := x.View([]int64{b, m.H, m.W, c})
	part := func(r, col int64) *torch.Tensor { return v.Slice(1, r, m.H, 2).Slice(2, col, m.W, 2) }
	y := torch.Cat([]*torch.Tensor{part(0, 0), part(1, 0), part(0, 1), part(1, 1)}, -1).View([]int64{b, -1, 4 * c})
	y = m.Norm.Forward(y)
	return s.Keep(torch.FastLinear(y, m.Reduction.Weight, nil))
}

// Stage is BasicLayer: blocks with alternating shifts (0, window/2, …) and
// an optional PatchMerging (keys blocks.j.*, downsample.*).
type Stage struct {
	Blocks     []*Block
	Downsample *PatchMerging // nil for the last stage
}

// StageConfig describes one stage.
type StageConfig struct {
	Dim, Depth, Heads int64
	Resolution        [2]int64
	Window            int64
	MLPRatio          float64
	QKVBias           bool
	QKScale           float64
	Eps               float64
	Downsample        bool
}

// NewStage takes a stage's weights.
func NewStage(b *nn.Builder, c StageConfig) (*Stage, error) {
	st := &Stage{}
	for j := int64(0); j < c.Depth; j++ {
		shift := int64(0)
		if j%2 == 1 {
			shift = c.Window / 2
		}
		blk, err := NewBlock(b.Sub("blocks").SubI(int(j)), BlockConfig{
			Dim: c.Dim, Heads: c.Heads, Resolution: c.Resolution, Window: c.Window, Shift: shift,
			MLPHidden: int64(float64(c.Dim) * c.MLPRatio), QKVBias: c.QKVBias, QKScale: c.QKScale, Eps: c.Eps,
		})
		if err != nil {
			st.Close()
			return nil, err
		}
		st.Blocks = append(st.Blocks, blk)
	}
	if c.Downsample {
		st.Downsample = NewPatchMerging(b.Sub("downsample"), c.Resolution[0], c.Resolution[1], c.Dim, c.Eps)
	}
	return st, nil
}

// Close frees the blocks' buffers.
func (st *Stage) Close() {
	for _, blk := range st.Blocks {
		blk.Close()
	}
}
