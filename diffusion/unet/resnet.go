package unet

import (
	"fmt"

	"github.com/dp2osr/dp2o/torch"
	"github.com/dp2osr/dp2o/torch/nn"
)

// actFunc is an elementwise activation.
type actFunc func(*torch.Tensor) *torch.Tensor

// activation maps config.act_fn to the function diffusers' get_activation
// returns.
func activation(name string) (actFunc, error) {
	f, err := nn.ActivationByName(name)
	if err != nil {
		return nil, fmt.Errorf("unet config: act_fn: %w", err)
	}
	return actFunc(f), nil
}

// mustActivation is activation for a validated config.
func mustActivation(name string) actFunc {
	f, err := activation(name)
	if err != nil {
		torch.Errorf("unet", "%v", err)
	}
	return f
}

// resnetBlock is diffusers' ResnetBlock2D with a time embedding
// (time_embedding_norm "default"):
//
//	h = conv1(act(norm1(x))) + time_emb_proj(act(temb))[:, :, None, None]
//	h = conv2(act(norm2(h)))
//	out = (shortcut(x) + h) / outScale
type resnetBlock struct {
	norm1, norm2 *nn.GroupNorm
	conv1, conv2 *nn.Conv2d
	timeProj     *nn.Linear
	shortcut     *nn.Conv2d // 1×1, when the channel count changes
	act          actFunc
	outScale     float64
}

// newResnetBlock requests the weights in diffusers' state-dict order.
func newResnetBlock(b *nn.Builder, l *blockLayout, in, out int64, outScale float64) *resnetBlock {
	r := &resnetBlock{act: mustActivation(l.act), outScale: outScale}
	r.norm1 = nn.NewGroupNorm(b.Sub("norm1"), l.groups, in, l.eps)
	r.conv1 = nn.NewConv2d(b.Sub("conv1"), in, out, 3, nn.Conv2dConfig{Padding: 1})
	r.timeProj = nn.NewLinear(b.Sub("time_emb_proj"), l.timeDim, out, true)
	r.norm2 = nn.NewGroupNorm(b.Sub("norm2"), l.groups, out, l.eps)
	r.conv2 = nn.NewConv2d(b.Sub("conv2"), out, out, 3, nn.Conv2dConfig{Padding: 1})
	if in != out {
		r.shortcut = nn.NewConv2d(b.Sub("conv_shortcut"), in, out, 1, nn.Conv2dConfig{})
	}
	return r
}

func (r *resnetBlock) forward(x, temb *torch.Tensor) *torch.Tensor {
	s := torch.NewScope()
	defer s.Close()
	h := r.conv1.Forward(r.act(r.norm1.Forward(x)))
	t := torch.FastLinear(r.act(temb), r.timeProj.Weight, r.timeProj.Bias).Unsqueeze(-1).Unsqueeze(-1)
	h = h.Add(t)
	h = r.conv2.Forward(r.act(r.norm2.Forward(h)))
	in := x
	if r.shortcut != nil {
		in = r.shortcut.Forward(x)
	}
	out := in.Add(h)
	if r.outScale != 1 {
		out = out.DivScalar(r.outScale)
	}
	return s.Keep(out)
}

// downsample is Downsample2D with a convolution: a 3×3 stride-2 conv with
// downsample_padding on every side, or, when that padding is 0, an
// asymmetric zero pad (right 1, bottom 1) first.
type downsample struct {
	conv *nn.Conv2d
	pad  int64
}

func newDownsample(b *nn.Builder, ch, pad int64) *downsample {
	return &downsample{conv: nn.NewConv2d(b.Sub("conv"), ch, ch, 3, nn.Conv2dConfig{Stride: 2, Padding: pad}), pad: pad}
}

func (d *downsample) forward(x *torch.Tensor) *torch.Tensor {
	if d.pad == 0 {
		s := torch.NewScope()
		defer s.Close()
		return s.Keep(d.conv.Forward(x.Pad([]int64{0, 1, 0, 1}, torch.PadConstant, 0)))
	}
	return d.conv.Forward(x)
}

// upsample is Upsample2D with a convolution: nearest-neighbour resize to
// size (×2 when size is nil), then a 3×3 conv.
type upsample struct {
	conv *nn.Conv2d
}

func newUpsample(b *nn.Builder, ch int64) *upsample {
	return &upsample{conv: nn.NewConv2d(b.Sub("conv"), ch, ch, 3, nn.Conv2dConfig{Padding: 1})}
}

func (u *upsample) forward(x *torch.Tensor, size []int64) *torch.Tensor {
	s := torch.NewScope()
	defer s.Close()
	if size == nil {
		size = []int64{2 * x.Size(2), 2 * x.Size(3)}
	}
	h := x
	// diffusers upcasts bfloat16 around the resize (older torch lacks the
	// bf16 kernel); the nearest-neighbour copy is exact either way.
	if h.DType() == torch.BFloat16 {
		h = h.To(torch.Float32).Interpolate(size, torch.Nearest, false, false).To(torch.BFloat16)
	} else {
		h = h.Interpolate(size, torch.Nearest, false, false)
	}
	return s.Keep(u.conv.Forward(h))
}
