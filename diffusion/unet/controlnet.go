package unet

import (
	"fmt"
	"path/filepath"

	"github.com/dp2osr/dp2o/torch"
	"github.com/dp2osr/dp2o/torch/nn"
)

// ControlNet is a ControlNetModel: a copy of the UNet's encoder half (conv_in,
// time embedding, down blocks, mid block) that also takes a conditioning
// image, and turns every skip connection and the mid-block output into a
// residual for the UNet through zero-initialised 1×1 convolutions.
type ControlNet struct {
	Config ControlNetConfig

	// Params owns the weights; Close frees them. The loaders set it; a model
	// built with NewControlNet or FromUNet leaves it to the caller.
	Params *nn.Params
	// Tap, when set, receives the intermediates of every forward pass:
	// time_proj, time_embedding, conv_in (before the conditioning is added),
	// controlnet_cond_embedding, down_blocks.i.res.j, down_blocks.i.hidden,
	// mid_block.
	Tap TapFunc
	// GradientCheckpointing runs each resnet and transformer of the down
	// and mid blocks through torch.Checkpoint when autograd records (as
	// UNet.GradientCheckpointing).
	GradientCheckpointing bool

	layout    *blockLayout
	convIn    *nn.Conv2d
	time      *timeEmbedding
	condEmbed *condEmbedding
	down      []*downBlock
	ctrlDown  []*nn.Conv2d
	ctrlMid   *nn.Conv2d
	mid       *midBlock
	opts      *attnOpts
	params    []Param
}

// condEmbedding is ControlNetConditioningEmbedding: conv_in (3×3) and act,
// then for each pair of blocks a 3×3 conv and a 3×3 stride-2 conv, each
// followed by SiLU, then conv_out (3×3, zero-initialised) to the UNet's
// first block width. It brings the image to the latent size (÷8 for four
// widths).
type condEmbedding struct {
	convIn  *nn.Conv2d
	blocks  []*nn.Conv2d
	convOut *nn.Conv2d
}

func newCondEmbedding(b *nn.Builder, in int64, widths []int, out int64) *condEmbedding {
	c := &condEmbedding{}
	c.convIn = nn.NewConv2d(b.Sub("conv_in"), in, int64(widths[0]), 3, nn.Conv2dConfig{Padding: 1})
	for i := 0; i < len(widths)-1; i++ {
		a, z := int64(widths[i]), int64(widths[i+1])
		c.blocks = append(c.blocks,
			nn.NewConv2d(b.Sub("blocks").SubI(2*i), a, a, 3, nn.Conv2dConfig{Padding: 1}),
			nn.NewConv2d(b.Sub("blocks").SubI(2*i+1), a, z, 3, nn.Conv2dConfig{Padding: 1, Stride: 2}))
	}
	c.convOut = nn.NewConv2d(b.Sub("conv_out"), int64(widths[len(widths)-1]), out, 3, nn.Conv2dConfig{Padding: 1})
	return c
}

func (c *condEmbedding) forward(x *torch.Tensor) *torch.Tensor {
	s := torch.NewScope()
	defer s.Close()
	h := c.convIn.Forward(x).Silu()
	for _, blk := range c.blocks {
		h = blk.Forward(h).Silu()
	}
	return s.Keep(c.convOut.Forward(h))
}

// NewControlNet builds the ControlNet, requesting every weight from b under
// diffusers' names, in state-dict order. The caller checks b.Finish().
func NewControlNet(b *nn.Builder, cfg ControlNetConfig) (cn *ControlNet, err error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	l, err := cfg.layout()
	if err != nil {
		return nil, err
	}
	defer torch.Recover(&err)
	rec := newParamRecorder(b)
	cn = &ControlNet{Config: cfg, layout: l,
		opts: &attnOpts{math: b.Device().Type == torch.DeviceCPU, upcast: cfg.UpcastAttention}}
	c0 := l.channels[0]
	cn.convIn = nn.NewConv2d(b.Sub("conv_in"), int64(cfg.InChannels), c0, 3, nn.Conv2dConfig{Padding: 1})
	cn.time = newTimeEmbedding(b.Sub("time_embedding"), cfg.Config, l)
	cn.condEmbed = newCondEmbedding(b.Sub("controlnet_cond_embedding"), int64(cfg.ConditioningChannels), cfg.ConditioningEmbeddingOutChannels, c0)
	for i := range l.channels {
		in := c0
		if i > 0 {
			in = l.channels[i-1]
		}
		cn.down = append(cn.down, newDownBlock(b.Sub("down_blocks").SubI(i), l, i, in, cn.opts))
	}
	zeroConv := func(ch int64) {
		cn.ctrlDown = append(cn.ctrlDown, nn.NewConv2d(b.Sub("controlnet_down_blocks").SubI(len(cn.ctrlDown)), ch, ch, 1, nn.Conv2dConfig{}))
	}
	zeroConv(c0)
	for i, d := range cn.down {
		for range d.numSkips() {
			zeroConv(l.channels[i])
		}
	}
	last := l.channels[len(l.channels)-1]
	if l.midType != "" {
		cn.ctrlMid = nn.NewConv2d(b.Sub("controlnet_mid_block"), last, last, 1, nn.Conv2dConfig{})
		cn.mid = newMidBlock(b.Sub("mid_block"), l, cn.opts)
	}
	cn.params = rec.done()
	return cn, nil
}

// LoadControlNet reads a diffusers ControlNet folder (config.json and
// diffusion_pytorch_model.safetensors, or its sharded .index.json, or
// diffusion_pytorch_model.bin: see nn.DiffusersWeights).
func LoadControlNet(dir string, dtype torch.DType, dev torch.Device) (*ControlNet, error) {
	return LoadControlNetVariant(dir, "", dtype, dev)
}

// LoadControlNetVariant is LoadControlNet for a weights variant such as
// "fp16"; "" is LoadControlNet.
func LoadControlNetVariant(dir, variant string, dtype torch.DType, dev torch.Device) (*ControlNet, error) {
	cfg, err := LoadControlNetConfig(filepath.Join(dir, "config.json"))
	if err != nil {
		return nil, err
	}
	path, err := nn.FindWeights(dir, nn.DiffusersWeights, variant)
	if err != nil {
		return nil, fmt.Errorf("controlnet: %w", err)
	}
	return LoadControlNetFile(cfg, path, dtype, dev)
}

// LoadControlNetFile reads the ControlNet of cfg from one safetensors file,
// such as the flat model.safetensors of the released C-SD2 / DP²O-SD2
// checkpoints (use ControlNetConfigFromUNet for their configuration).
func LoadControlNetFile(cfg ControlNetConfig, path string, dtype torch.DType, dev torch.Device) (*ControlNet, error) {
	cn, err := nn.LoadFile(path, func(src nn.Source) (*ControlNet, error) { return ControlNetFromSource(src, cfg, dtype, dev) })
	if err != nil {
		return nil, fmt.Errorf("controlnet: %w", err)
	}
	return cn, nil
}

// ControlNetFromSource builds the ControlNet from the weights of src (a
// state dict with diffusers' names); like PyTorch's strict load_state_dict,
// every key must be there with its shape and no other key may be. The
// returned model owns its weights.
func ControlNetFromSource(src nn.Source, cfg ControlNetConfig, dtype torch.DType, dev torch.Device) (*ControlNet, error) {
	cn, p, err := nn.Build(src, dtype, dev, func(b *nn.Builder) (*ControlNet, error) { return NewControlNet(b, cfg) })
	if err != nil {
		return nil, err
	}
	cn.Params = p
	return cn, nil
}

// Close frees the weights the model owns. It is idempotent.
func (cn *ControlNet) Close() {
	if cn == nil || cn.Params == nil {
		return
	}
	cn.Params.Close()
	cn.Params = nil
}

// Parameters lists the model's weights in state-dict order (the model's own
// tensors, not copies): what training optimises and saves.
func (cn *ControlNet) Parameters() []Param { return cn.params }

func (cn *ControlNet) tap(name string, t *torch.Tensor) {
	if cn.Tap != nil {
		cn.Tap(name, t)
	}
}

// TryForward is Forward returning bad input as an error instead of a panic.
func (cn *ControlNet) TryForward(sample, timesteps, encoderHiddenStates, cond *torch.Tensor, scale float64) (r *Residuals, err error) {
	defer torch.Recover(&err)
	return cn.Forward(sample, timesteps, encoderHiddenStates, cond, scale), nil
}

// Forward computes the residuals for latents sample (B, in_channels, h, w)
// at timesteps (0-d or (B)) with text embeddings encoderHiddenStates and the
// conditioning image cond (B, conditioning_channels, 8h, 8w for SD, values
// in [0, 1]), each multiplied by scale (controlnet_conditioning_scale). The
// caller closes the result. It panics with *torch.Error on bad input.
func (cn *ControlNet) Forward(sample, timesteps, encoderHiddenStates, cond *torch.Tensor, scale float64) *Residuals {
	s := torch.NewScope()
	defer s.Close()
	text := encoderHiddenStates
	checkInputs("controlnet", cn.Config.InChannels, cn.layout, sample, text)
	if cond.Dim() != 4 || cond.Size(0) != sample.Size(0) || cond.Size(1) != int64(cn.Config.ConditioningChannels) {
		torch.Errorf("controlnet", "controlnet_cond must be (batch=%d, %d, H, W), got shape %v",
			sample.Size(0), cn.Config.ConditioningChannels, cond.Shape())
	}
	bsz := sample.Size(0)
	t := batchTimesteps(timesteps, bsz, sample.Device())
	proj, emb := cn.time.forward(t, sample.DType())
	cn.tap("time_proj", proj)
	cn.tap("time_embedding", emb)

	if cn.Config.ChannelOrder == "bgr" {
		cond = cond.Flip([]int64{1})
	}
	h := cn.convIn.Forward(sample)
	cn.tap("conv_in", h)
	c := cn.condEmbed.forward(cond)
	cn.tap("controlnet_cond_embedding", c)
	if fmt.Sprint(c.Shape()) != fmt.Sprint(h.Shape()) {
		torch.Errorf("controlnet", "conditioning image %v embeds to %v, which does not match the latents' %v",
			cond.Shape(), c.Shape(), h.Shape())
	}
	h = h.Add(c)
	skips := []*torch.Tensor{h}
	for i, d := range cn.down {
		var res []*torch.Tensor
		h, res = d.forward(h, emb, text, cn.GradientCheckpointing)
		for j, r := range res {
			cn.tap(fmt.Sprintf("down_blocks.%d.res.%d", i, j), r)
		}
		cn.tap(fmt.Sprintf("down_blocks.%d.hidden", i), h)
		skips = append(skips, res...)
	}
	var mid *torch.Tensor
	if cn.mid != nil {
		h = cn.mid.forward(h, emb, text, cn.GradientCheckpointing)
		cn.tap("mid_block", h)
		mid = cn.ctrlMid.Forward(h)
	}
	finish := func(x *torch.Tensor) *torch.Tensor {
		x = x.MulScalar(scale)
		if cn.Config.GlobalPoolConditions {
			x = x.MeanDims([]int64{2, 3}, true)
		}
		return x
	}
	out := &Residuals{}
	for i, sk := range skips {
		out.Down = append(out.Down, finish(cn.ctrlDown[i].Forward(sk)))
	}
	if mid != nil {
		out.Mid = finish(mid)
	}
	// Nothing can fail past this point: the results leave the scope.
	s.KeepAll(out.Down)
	s.Keep(out.Mid)
	return out
}
