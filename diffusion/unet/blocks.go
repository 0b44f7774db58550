package unet

import (
	"github.com/dp2osr/dp2o/torch"
	"github.com/dp2osr/dp2o/torch/nn"
)

// downBlock is CrossAttnDownBlock2D (attentions set) or DownBlock2D: pairs
// of resnet (+ transformer), then an optional Downsample2D. Every pair's
// output and the downsampler's are skip connections.
type downBlock struct {
	resnets    []*resnetBlock
	attentions []*transformer2D // nil for DownBlock2D
	down       *downsample
}

// newDownBlock builds down block i; in is the previous block's channels.
// The attentions are requested before the resnets, as the module
// registers them.
func newDownBlock(b *nn.Builder, l *blockLayout, i int, in int64, o *attnOpts) *downBlock {
	out := l.channels[i]
	d := &downBlock{}
	if l.crossAttn[i] {
		for j := range l.layers[i] {
			d.attentions = append(d.attentions, newTransformer2D(b.Sub("attentions").SubI(j), l, out, l.heads[i], l.tLayers[i], l.crossDim[i], l.onlyCross[i], o))
		}
	}
	for j := range l.layers[i] {
		cin := out
		if j == 0 {
			cin = in
		}
		d.resnets = append(d.resnets, newResnetBlock(b.Sub("resnets").SubI(j), l, cin, out, l.outScale))
	}
	if i < len(l.channels)-1 {
		d.down = newDownsample(b.Sub("downsamplers").SubI(0), out, l.downPadding)
	}
	return d
}

// forward returns the block's output and its skip tensors (which include
// the output), all owned by the caller's scope. With ckpt each resnet and
// transformer runs through torch.Checkpoint.
func (d *downBlock) forward(x, temb, text *torch.Tensor, ckpt bool) (*torch.Tensor, []*torch.Tensor) {
	s := torch.NewScope()
	defer s.Close()
	h := x
	var skips []*torch.Tensor
	for j, r := range d.resnets {
		h = checkpointed(ckpt, r.forward, h, temb)
		if d.attentions != nil {
			h = checkpointed(ckpt, d.attentions[j].forward, h, text)
		}
		skips = append(skips, h)
	}
	if d.down != nil {
		h = d.down.forward(h)
		skips = append(skips, h)
	}
	s.KeepAll(skips)
	return h, skips
}

// numSkips is the number of skip tensors forward returns.
func (d *downBlock) numSkips() int {
	n := len(d.resnets)
	if d.down != nil {
		n++
	}
	return n
}

// midBlock is UNetMidBlock2DCrossAttn with one layer: resnet, then
// (transformer, resnet).
type midBlock struct {
	resnets    []*resnetBlock
	attentions []*transformer2D
}

// newMidBlock requests the attentions before the resnets, as the module
// registers them.
func newMidBlock(b *nn.Builder, l *blockLayout, o *attnOpts) *midBlock {
	n := len(l.channels) - 1
	ch := l.channels[n]
	m := &midBlock{}
	m.attentions = append(m.attentions, newTransformer2D(b.Sub("attentions").SubI(0), l, ch, l.heads[n], l.tLayers[n], l.crossDim[n], false, o))
	for j := range 2 {
		m.resnets = append(m.resnets, newResnetBlock(b.Sub("resnets").SubI(j), l, ch, ch, l.midScale))
	}
	return m
}

func (m *midBlock) forward(x, temb, text *torch.Tensor, ckpt bool) *torch.Tensor {
	s := torch.NewScope()
	defer s.Close()
	h := checkpointed(ckpt, m.resnets[0].forward, x, temb)
	for j, a := range m.attentions {
		h = checkpointed(ckpt, a.forward, h, text)
		h = checkpointed(ckpt, m.resnets[j+1].forward, h, temb)
	}
	return s.Keep(h)
}

// upBlock is CrossAttnUpBlock2D (attentions set) or UpBlock2D: each resnet
// takes the concatenation of the hidden state and the last unused skip
// tensor; then an optional Upsample2D.
type upBlock struct {
	resnets    []*resnetBlock
	attentions []*transformer2D
	up         *upsample
}

// upSpec is the shape of one up block in diffusers' construction.
type upSpec struct {
	prevOut, out, in int64 // prev_output_channel, out_channels, in_channels
	layers           int   // resnets (layers_per_block + 1)
	heads, tLayers   int
	crossDim         int
	onlyCross        bool
	crossAttn        bool
	addUpsample      bool
}

func newUpBlock(b *nn.Builder, l *blockLayout, sp upSpec, o *attnOpts) *upBlock {
	u := &upBlock{}
	if sp.crossAttn {
		for j := range sp.layers {
			u.attentions = append(u.attentions, newTransformer2D(b.Sub("attentions").SubI(j), l, sp.out, sp.heads, sp.tLayers, sp.crossDim, sp.onlyCross, o))
		}
	}
	for j := range sp.layers {
		skip := sp.out
		if j == sp.layers-1 {
			skip = sp.in
		}
		cin := sp.out
		if j == 0 {
			cin = sp.prevOut
		}
		u.resnets = append(u.resnets, newResnetBlock(b.Sub("resnets").SubI(j), l, cin+skip, sp.out, l.outScale))
	}
	if sp.addUpsample {
		u.up = newUpsample(b.Sub("upsamplers").SubI(0), sp.out)
	}
	return u
}

// forward consumes skips from the end (len(u.resnets) of them); size is the
// upsampler's output size (nil: ×2).
func (u *upBlock) forward(x *torch.Tensor, skips []*torch.Tensor, temb, text *torch.Tensor, size []int64, ckpt bool) *torch.Tensor {
	s := torch.NewScope()
	defer s.Close()
	h := x
	for j, r := range u.resnets {
		res := skips[len(skips)-1-j]
		h = checkpointed(ckpt, r.forward, torch.Cat([]*torch.Tensor{h, res}, 1), temb)
		if u.attentions != nil {
			h = checkpointed(ckpt, u.attentions[j].forward, h, text)
		}
	}
	if u.up != nil {
		h = u.up.forward(h, size)
	}
	return s.Keep(h)
}
