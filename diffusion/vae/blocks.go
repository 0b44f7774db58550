package vae

import (
	"fmt"

	"github.com/dp2osr/dp2o/torch"
	"github.com/dp2osr/dp2o/torch/nn"
)

// normEps is the epsilon of every GroupNorm of the VAE (resnets, mid-block
// attention, conv_norm_out).
const normEps = 1e-6

// activation maps config.act_fn to the function diffusers' get_activation
// returns.
func activation(name string) (func(*torch.Tensor) *torch.Tensor, error) {
	f, err := nn.ActivationByName(name)
	if err != nil {
		return nil, fmt.Errorf("vae config: act_fn: %w", err)
	}
	return f, nil
}

// resnetBlock is diffusers' ResnetBlock2D without a time embedding:
// norm1 → act → conv1 → norm2 → act → conv2, plus the input (through a 1×1
// conv_shortcut when the channel count changes).
type resnetBlock struct {
	norm1, norm2 *nn.GroupNorm
	conv1, conv2 *nn.Conv2d
	shortcut     *nn.Conv2d
	act          func(*torch.Tensor) *torch.Tensor
}

// newResnetBlock requests the weights in diffusers' state-dict order.
func newResnetBlock(b *nn.Builder, in, out, groups int64, act func(*torch.Tensor) *torch.Tensor) *resnetBlock {
	r := &resnetBlock{act: act}
	r.norm1 = nn.NewGroupNorm(b.Sub("norm1"), groups, in, normEps)
	r.conv1 = nn.NewConv2d(b.Sub("conv1"), in, out, 3, nn.Conv2dConfig{Padding: 1})
	r.norm2 = nn.NewGroupNorm(b.Sub("norm2"), groups, out, normEps)
	r.conv2 = nn.NewConv2d(b.Sub("conv2"), out, out, 3, nn.Conv2dConfig{Padding: 1})
	if in != out {
		r.shortcut = nn.NewConv2d(b.Sub("conv_shortcut"), in, out, 1, nn.Conv2dConfig{})
	}
	return r
}

func (r *resnetBlock) forward(x *torch.Tensor) *torch.Tensor {
	s := torch.NewScope()
	defer s.Close()
	h := r.norm1.Forward(x)
	h = torch.Then(h, r.act, x)
	h = torch.Then(h, r.conv1.Forward, x)
	h = torch.Then(h, r.norm2.Forward, x)
	h = torch.Then(h, r.act, x)
	h = torch.Then(h, r.conv2.Forward, x)
	in := x
	if r.shortcut != nil {
		in = r.shortcut.Forward(x)
	}
	// output_scale_factor is 1 in the VAE: (input + h) / 1 is input + h.
	return s.Keep(in.Add(h))
}

// attentionBlock is the mid-block self-attention (diffusers' Attention with
// one head of dim C, a GroupNorm, biased projections and a residual).
type attentionBlock struct {
	norm                 *nn.GroupNorm
	toQ, toK, toV, toOut *nn.Linear
}

func newAttentionBlock(b *nn.Builder, ch, groups int64) *attentionBlock {
	return &attentionBlock{
		norm:  nn.NewGroupNorm(b.Sub("group_norm"), groups, ch, normEps),
		toQ:   nn.NewLinear(b.Sub("to_q"), ch, ch, true),
		toK:   nn.NewLinear(b.Sub("to_k"), ch, ch, true),
		toV:   nn.NewLinear(b.Sub("to_v"), ch, ch, true),
		toOut: nn.NewLinear(b.Sub("to_out").SubI(0), ch, ch, true),
	}
}

// forward follows AttnProcessor2_0 for a 4-d input.
func (a *attentionBlock) forward(x *torch.Tensor) *torch.Tensor {
	s := torch.NewScope()
	defer s.Close()
	sh := x.Shape()
	bsz, c, hgt, wid := sh[0], sh[1], sh[2], sh[3]
	h := x.View([]int64{bsz, c, hgt * wid}) // (B, C, HW)
	h = a.norm.Forward(h).Transpose(1, 2)   // (B, HW, C)
	heads := func(t *torch.Tensor) *torch.Tensor {
		return t.View([]int64{bsz, -1, 1, c}).Transpose(1, 2) // (B, 1, HW, C)
	}
	q := heads(a.toQ.Forward(h))
	k := heads(a.toK.Forward(h))
	v := heads(a.toV.Forward(h))
	o := torch.ScaledDotProductAttention(q, k, v, torch.AttentionOpts{})
	o = o.Transpose(1, 2).Reshape([]int64{bsz, -1, c})
	o = a.toOut.Forward(o)
	o = o.Transpose(-1, -2).Reshape([]int64{bsz, c, hgt, wid})
	// residual_connection with rescale_output_factor 1.
	return s.Keep(o.Add(x))
}

// midBlock is UNetMidBlock2D without a time embedding: resnet, attention
// (unless mid_block_add_attention is false), resnet.
type midBlock struct {
	attn    *attentionBlock
	resnets [2]*resnetBlock
}

// newMidBlock requests the attention weights before the resnets, as the
// module registers them.
func newMidBlock(b *nn.Builder, ch, groups int64, addAttention bool, act func(*torch.Tensor) *torch.Tensor) *midBlock {
	m := &midBlock{}
	if addAttention {
		m.attn = newAttentionBlock(b.Sub("attentions").SubI(0), ch, groups)
	}
	for i := range m.resnets {
		m.resnets[i] = newResnetBlock(b.Sub("resnets").SubI(i), ch, ch, groups, act)
	}
	return m
}

func (m *midBlock) forward(x *torch.Tensor) *torch.Tensor {
	s := torch.NewScope()
	defer s.Close()
	h := m.resnets[0].forward(x)
	if m.attn != nil {
		h = torch.Then(h, m.attn.forward, x)
	}
	return s.Keep(torch.Then(h, m.resnets[1].forward, x))
}

// downBlock is DownEncoderBlock2D: resnets, then (except in the last block)
// Downsample2D with an asymmetric zero pad (right 1, bottom 1) and a 3×3
// stride-2 convolution.
type downBlock struct {
	resnets []*resnetBlock
	down    *nn.Conv2d
}

func newDownBlock(b *nn.Builder, in, out, groups int64, layers int, addDownsample bool, act func(*torch.Tensor) *torch.Tensor) *downBlock {
	d := &downBlock{}
	for j := range layers {
		cin := out
		if j == 0 {
			cin = in
		}
		d.resnets = append(d.resnets, newResnetBlock(b.Sub("resnets").SubI(j), cin, out, groups, act))
	}
	if addDownsample {
		d.down = nn.NewConv2d(b.Sub("downsamplers").SubI(0).Sub("conv"), out, out, 3, nn.Conv2dConfig{Stride: 2})
	}
	return d
}

func (d *downBlock) forward(x *torch.Tensor) *torch.Tensor {
	s := torch.NewScope()
	defer s.Close()
	h := x
	for _, r := range d.resnets {
		h = torch.Then(h, r.forward, x)
	}
	if d.down != nil {
		h = torch.Then(h, func(t *torch.Tensor) *torch.Tensor { return t.Pad([]int64{0, 1, 0, 1}, torch.PadConstant, 0) }, x)
		h = torch.Then(h, d.down.Forward, x)
	}
	return s.Keep(h)
}

// upBlock is UpDecoderBlock2D: layers+1 resnets, then (except in the last
// block) Upsample2D: nearest ×2 and a 3×3 convolution.
type upBlock struct {
	resnets []*resnetBlock
	up      *nn.Conv2d
}

func newUpBlock(b *nn.Builder, in, out, groups int64, layers int, addUpsample bool, act func(*torch.Tensor) *torch.Tensor) *upBlock {
	u := &upBlock{}
	for j := range layers {
		cin := out
		if j == 0 {
			cin = in
		}
		u.resnets = append(u.resnets, newResnetBlock(b.Sub("resnets").SubI(j), cin, out, groups, act))
	}
	if addUpsample {
		u.up = nn.NewConv2d(b.Sub("upsamplers").SubI(0).Sub("conv"), out, out, 3, nn.Conv2dConfig{Padding: 1})
	}
	return u
}

func (u *upBlock) forward(x *torch.Tensor) *torch.Tensor {
	s := torch.NewScope()
	defer s.Close()
	h := x
	for _, r := range u.resnets {
		h = torch.Then(h, r.forward, x)
	}
	if u.up != nil {
		sh := h.Shape()
		nearest := func(t *torch.Tensor) *torch.Tensor {
			return t.Interpolate([]int64{2 * sh[2], 2 * sh[3]}, torch.Nearest, false, false)
		}
		if h.DType() == torch.BFloat16 {
			// Upsample2D upsamples bfloat16 in float32 (nearest is not
			// implemented for bfloat16 in older torch) and casts back.
			h = torch.Then(h, func(t *torch.Tensor) *torch.Tensor { return t.To(torch.Float32) }, x)
			h = torch.Then(h, nearest, x)
			h = torch.Then(h, func(t *torch.Tensor) *torch.Tensor { return t.To(torch.BFloat16) }, x)
		} else {
			h = torch.Then(h, nearest, x)
		}
		h = torch.Then(h, u.up.Forward, x)
	}
	return s.Keep(h)
}
