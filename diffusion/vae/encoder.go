package vae

import (
	"strconv"

	"github.com/dp2osr/dp2o/torch"
	"github.com/dp2osr/dp2o/torch/nn"
)

// TapFunc receives named intermediate tensors during a forward pass (names
// as diffusers' module paths: "encoder.down_blocks.0", "quant_conv", …).
// The tensor belongs to the forward's scope: a tap that keeps it must take
// its own handle (torch.Unscope(t.Alias())) or copy it.
type TapFunc func(name string, t *torch.Tensor)

func (f TapFunc) emit(name string, t *torch.Tensor) {
	if f != nil {
		f(name, t)
	}
}

// Encoder is diffusers' VAE Encoder: conv_in, DownEncoderBlock2Ds, the mid
// block, GroupNorm, activation and conv_out to 2·latent_channels moments.
type Encoder struct {
	convIn  *nn.Conv2d
	down    []*downBlock
	mid     *midBlock
	normOut *nn.GroupNorm
	convOut *nn.Conv2d
	act     func(*torch.Tensor) *torch.Tensor
}

func newEncoder(b *nn.Builder, c Config) *Encoder {
	act, _ := activation(c.ActFn)
	g := int64(c.NormNumGroups)
	ch := c.BlockOutChannels
	e := &Encoder{act: act}
	e.convIn = nn.NewConv2d(b.Sub("conv_in"), int64(c.InChannels), int64(ch[0]), 3, nn.Conv2dConfig{Padding: 1})
	out := ch[0]
	for i := range ch {
		in := out
		out = ch[i]
		last := i == len(ch)-1
		e.down = append(e.down, newDownBlock(b.Sub("down_blocks").SubI(i), int64(in), int64(out), g, c.LayersPerBlock, !last, act))
	}
	top := int64(ch[len(ch)-1])
	e.mid = newMidBlock(b.Sub("mid_block"), top, g, c.MidBlockAddAttention, act)
	e.normOut = nn.NewGroupNorm(b.Sub("conv_norm_out"), g, top, normEps)
	e.convOut = nn.NewConv2d(b.Sub("conv_out"), top, 2*int64(c.LatentChannels), 3, nn.Conv2dConfig{Padding: 1})
	return e
}

// Forward maps an image (N, in_channels, H, W) to moments (N,
// 2·latent_channels, H/f, W/f). It panics with a *torch.Error on bad input.
func (e *Encoder) Forward(x *torch.Tensor, tap TapFunc) *torch.Tensor {
	s := torch.NewScope()
	defer s.Close()
	// Each stage's output is freed as soon as the next stage has consumed
	// it (torch.Then), not when the forward returns (a tap keeps its own
	// handle).
	h := e.convIn.Forward(x)
	tap.emit("encoder.conv_in", h)
	for i, d := range e.down {
		h = torch.Then(h, d.forward, x)
		tap.emit("encoder.down_blocks."+strconv.Itoa(i), h)
	}
	h = torch.Then(h, e.mid.forward, x)
	tap.emit("encoder.mid_block", h)
	h = torch.Then(h, e.normOut.Forward, x)
	tap.emit("encoder.conv_norm_out", h)
	h = torch.Then(h, e.act, x)
	h = torch.Then(h, e.convOut.Forward, x)
	tap.emit("encoder.conv_out", h)
	return s.Keep(h)
}

// Decoder is diffusers' VAE Decoder: conv_in, the mid block,
// UpDecoderBlock2Ds, GroupNorm, activation and conv_out.
type Decoder struct {
	convIn  *nn.Conv2d
	up      []*upBlock
	mid     *midBlock
	normOut *nn.GroupNorm
	convOut *nn.Conv2d
	act     func(*torch.Tensor) *torch.Tensor
}

// newDecoder requests the up blocks before the mid block, as the module
// registers them.
func newDecoder(b *nn.Builder, c Config) *Decoder {
	act, _ := activation(c.ActFn)
	g := int64(c.NormNumGroups)
	ch := c.BlockOutChannels
	n := len(ch)
	top := int64(ch[n-1])
	d := &Decoder{act: act}
	d.convIn = nn.NewConv2d(b.Sub("conv_in"), int64(c.LatentChannels), top, 3, nn.Conv2dConfig{Padding: 1})
	out := ch[n-1]
	for i := range n {
		prev := out
		out = ch[n-1-i]
		last := i == n-1
		d.up = append(d.up, newUpBlock(b.Sub("up_blocks").SubI(i), int64(prev), int64(out), g, c.LayersPerBlock+1, !last, act))
	}
	d.mid = newMidBlock(b.Sub("mid_block"), top, g, c.MidBlockAddAttention, act)
	d.normOut = nn.NewGroupNorm(b.Sub("conv_norm_out"), g, int64(ch[0]), normEps)
	d.convOut = nn.NewConv2d(b.Sub("conv_out"), int64(ch[0]), int64(c.OutChannels), 3, nn.Conv2dConfig{Padding: 1})
	return d
}

// Forward maps a (post-quant-conv) latent (N, latent_channels, h, w) to an
// image (N, out_channels, h·f, w·f). It panics with a *torch.Error on bad
// input.
func (d *Decoder) Forward(z *torch.Tensor, tap TapFunc) *torch.Tensor {
	s := torch.NewScope()
	defer s.Close()
	// As in Encoder.Forward, each stage's input is freed once consumed.
	h := d.convIn.Forward(z)
	tap.emit("decoder.conv_in", h)
	h = torch.Then(h, d.mid.forward, z)
	tap.emit("decoder.mid_block", h)
	for i, u := range d.up {
		h = torch.Then(h, u.forward, z)
		tap.emit("decoder.up_blocks."+strconv.Itoa(i), h)
	}
	h = torch.Then(h, d.normOut.Forward, z)
	tap.emit("decoder.conv_norm_out", h)
	h = torch.Then(h, d.act, z)
	h = torch.Then(h, d.convOut.Forward, z)
	tap.emit("decoder.conv_out", h)
	return s.Keep(h)
}
