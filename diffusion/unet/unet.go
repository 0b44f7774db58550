// Package unet is diffusers' UNet2DConditionModel (the Stable Diffusion 2
// denoiser; SD1.x and SD2.1 configurations build too) and ControlNetModel,
// whose residuals the UNet adds to its skip connections and mid-block
// output.
//
// Models are built from a config.json (Config, ControlNetConfig) through an
// nn.Builder, which takes every weight by its diffusers name. Forward methods
// panic with *torch.Error on bad input, like the tensor ops they are made
// of; TryForward returns the error instead.
package unet

import (
	"fmt"
	"path/filepath"

	"github.com/dp2osr/dp2o/torch"
	"github.com/dp2osr/dp2o/torch/nn"
)

// UNet is a UNet2DConditionModel: it predicts the noise (or v) of latents
// sample at timesteps, conditioned on text embeddings.
type UNet struct {
	Config Config

	// Params owns the weights; Close frees them. Load sets it; a model
	// built with New leaves it to the caller (set it to hand the weights
	// over).
	Params *nn.Params
	// Tap, when set, receives the intermediates of every forward pass:
	// time_proj, time_embedding, conv_in, down_blocks.i.res.j,
	// down_blocks.i.hidden, mid_block (before any ControlNet residual),
	// up_blocks.i, conv_norm_out, conv_act, conv_out.
	Tap TapFunc
	// GradientCheckpointing runs each resnet and transformer of the down,
	// mid and up blocks through torch.Checkpoint when autograd records:
	// their activations are recomputed in the backward pass instead of kept
	// (diffusers' enable_gradient_checkpointing). The outputs and gradients
	// are those of the plain forward pass.
	GradientCheckpointing bool

	layout   *blockLayout
	convIn   *nn.Conv2d
	time     *timeEmbedding
	down     []*downBlock
	up       []*upBlock
	mid      *midBlock
	normOut  *nn.GroupNorm
	convOut  *nn.Conv2d
	act      actFunc
	opts     *attnOpts
	params   []Param
	numSkips int
}

// New builds the UNet, requesting every weight from b under diffusers'
// names, in state-dict order. The caller checks b.Finish(). Attention runs
// in the exact reference order on the CPU and through libtorch's fused
// kernels (where it has them) on other devices.
func New(b *nn.Builder, cfg Config) (u *UNet, err error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	l, err := cfg.layout()
	if err != nil {
		return nil, err
	}
	defer torch.Recover(&err)
	rec := newParamRecorder(b)
	u = &UNet{Config: cfg, layout: l, act: mustActivation(cfg.ActFn),
		opts: &attnOpts{math: b.Device().Type == torch.DeviceCPU, upcast: cfg.UpcastAttention}}
	k := int64(cfg.ConvInKernel)
	u.convIn = nn.NewConv2d(b.Sub("conv_in"), int64(cfg.InChannels), l.channels[0], k, nn.Conv2dConfig{Padding: (k - 1) / 2})
	u.time = newTimeEmbedding(b.Sub("time_embedding"), cfg, l)
	u.numSkips = 1
	for i := range l.channels {
		in := l.channels[0]
		if i > 0 {
			in = l.channels[i-1]
		}
		d := newDownBlock(b.Sub("down_blocks").SubI(i), l, i, in, u.opts)
		u.down = append(u.down, d)
		u.numSkips += d.numSkips()
	}
	u.up = newUpBlocks(b.Sub("up_blocks"), cfg, l, u.opts)
	if l.midType != "" {
		u.mid = newMidBlock(b.Sub("mid_block"), l, u.opts)
	}
	u.normOut = nn.NewGroupNorm(b.Sub("conv_norm_out"), l.groups, l.channels[0], l.eps)
	k = int64(cfg.ConvOutKernel)
	u.convOut = nn.NewConv2d(b.Sub("conv_out"), l.channels[0], int64(cfg.OutChannels), k, nn.Conv2dConfig{Padding: (k - 1) / 2})
	u.params = rec.done()
	return u, nil
}

// newUpBlocks follows diffusers' construction of the decoder: the lists
// reversed, up block i with layers_per_block+1 resnets.
func newUpBlocks(b *nn.Builder, cfg Config, l *blockLayout, o *attnOpts) []*upBlock {
	n := len(l.channels)
	rev := func(x []int) []int {
		out := make([]int, len(x))
		for i := range x {
			out[i] = x[len(x)-1-i]
		}
		return out
	}
	tLayers := rev(l.tLayers)
	if len(cfg.ReverseTransformerLayersPerBlock) > 0 {
		tLayers = cfg.ReverseTransformerLayersPerBlock
	}
	heads, layers, crossDim := rev(l.heads), rev(l.layers), rev(l.crossDim)
	var ups []*upBlock
	out := l.channels[n-1]
	for i, typ := range cfg.UpBlockTypes {
		prev := out
		out = l.channels[n-1-i]
		in := l.channels[max(n-2-i, 0)]
		sp := upSpec{prevOut: prev, out: out, in: in, layers: layers[i] + 1, heads: heads[i], tLayers: tLayers[i],
			crossDim: crossDim[i], onlyCross: l.onlyCross[n-1-i], crossAttn: typ == "CrossAttnUpBlock2D", addUpsample: i < n-1}
		if sp.crossAttn && sp.out%int64(sp.heads) != 0 {
			torch.Errorf("unet", "up block %d: %d channels not divisible into %d heads", i, sp.out, sp.heads)
		}
		ups = append(ups, newUpBlock(b.SubI(i), l, sp, o))
	}
	return ups
}

// Load reads a diffusers UNet folder (config.json and
// diffusion_pytorch_model.safetensors, or its sharded .index.json, or
// diffusion_pytorch_model.bin: see nn.DiffusersWeights) with
// floating-point weights converted to dtype on dev.
func Load(dir string, dtype torch.DType, dev torch.Device) (*UNet, error) {
	return LoadVariant(dir, "", dtype, dev)
}

// LoadVariant is Load for a weights variant such as "fp16"
// (diffusion_pytorch_model.fp16.safetensors, ...); "" is Load.
func LoadVariant(dir, variant string, dtype torch.DType, dev torch.Device) (*UNet, error) {
	cfg, err := LoadConfig(filepath.Join(dir, "config.json"))
	if err != nil {
		return nil, err
	}
	path, err := nn.FindWeights(dir, nn.DiffusersWeights, variant)
	if err != nil {
		return nil, fmt.Errorf("unet: %w", err)
	}
	return LoadFile(cfg, path, dtype, dev)
}

// LoadFile reads the UNet of cfg from a checkpoint file: safetensors, a
// sharded index, or a .bin pickle (nn.OpenWeights).
func LoadFile(cfg Config, path string, dtype torch.DType, dev torch.Device) (*UNet, error) {
	u, err := nn.LoadFile(path, func(src nn.Source) (*UNet, error) { return FromSource(src, cfg, dtype, dev) })
	if err != nil {
		return nil, fmt.Errorf("unet: %w", err)
	}
	return u, nil
}

// FromSource builds the UNet from the weights of src (a state dict with
// diffusers' names). Every key of src must be used. The returned model owns
// its weights.
func FromSource(src nn.Source, cfg Config, dtype torch.DType, dev torch.Device) (*UNet, error) {
	u, p, err := nn.Build(src, dtype, dev, func(b *nn.Builder) (*UNet, error) { return New(b, cfg) })
	if err != nil {
		return nil, err
	}
	u.Params = p
	return u, nil
}

// Close frees the weights the model owns. It is idempotent.
func (u *UNet) Close() {
	if u == nil || u.Params == nil {
		return
	}
	u.Params.Close()
	u.Params = nil
}

// Parameters lists the model's weights in state-dict order (the tensors
// are the model's own, not copies).
func (u *UNet) Parameters() []Param { return u.params }

// NumSkips is the number of skip connections of the down path (12 for
// SD2), which is the number of ControlNet down residuals.
func (u *UNet) NumSkips() int { return u.numSkips }

func (u *UNet) tap(name string, t *torch.Tensor) {
	if u.Tap != nil {
		u.Tap(name, t)
	}
}

// TryForward is Forward returning bad input (shapes, dtypes, devices) as an
// error instead of a panic.
func (u *UNet) TryForward(sample, timesteps, encoderHiddenStates *torch.Tensor, ctrl *Residuals) (out *torch.Tensor, err error) {
	defer torch.Recover(&err)
	return u.Forward(sample, timesteps, encoderHiddenStates, ctrl), nil
}

// Forward predicts the model output for latents sample (B, in_channels, h,
// w) at timesteps (0-d or (B), integer or float) given text embeddings
// encoderHiddenStates (B, S, cross_attention_dim). ctrl, when not nil,
// holds ControlNet residuals added to the skip connections and to the
// mid-block output, as diffusers does. It panics with *torch.Error on bad
// input.
func (u *UNet) Forward(sample, timesteps, encoderHiddenStates *torch.Tensor, ctrl *Residuals) *torch.Tensor {
	s := torch.NewScope()
	defer s.Close()
	text := encoderHiddenStates
	checkInputs("unet", u.Config.InChannels, u.layout, sample, text)
	bsz := sample.Size(0)
	t := batchTimesteps(timesteps, bsz, sample.Device())
	proj, emb := u.time.forward(t, sample.DType())
	u.tap("time_proj", proj)
	u.tap("time_embedding", emb)

	h := sample
	if u.Config.CenterInputSample {
		h = h.MulScalar(2).SubScalar(1)
	}
	h = u.convIn.Forward(h)
	u.tap("conv_in", h)
	skips := []*torch.Tensor{h}
	for i, d := range u.down {
		var res []*torch.Tensor
		h, res = d.forward(h, emb, text, u.GradientCheckpointing)
		for j, r := range res {
			u.tap(fmt.Sprintf("down_blocks.%d.res.%d", i, j), r)
		}
		u.tap(fmt.Sprintf("down_blocks.%d.hidden", i), h)
		skips = append(skips, res...)
	}
	if ctrl != nil && ctrl.Down != nil {
		if len(ctrl.Down) != len(skips) {
			torch.Errorf("unet", "%d ControlNet down residuals for %d skip connections", len(ctrl.Down), len(skips))
		}
		for i := range skips {
			checkSameShape("ControlNet down residual", i, ctrl.Down[i], skips[i])
			sum := skips[i].Add(ctrl.Down[i])
			if skips[i] != h { // the last skip is also the mid block's input
				skips[i].Close()
			}
			skips[i] = sum
		}
	}
	if u.mid != nil {
		h = u.mid.forward(h, emb, text, u.GradientCheckpointing)
		u.tap("mid_block", h)
	}
	if ctrl != nil && ctrl.Mid != nil {
		checkSameShape("ControlNet mid residual", 0, ctrl.Mid, h)
		h = h.Add(ctrl.Mid)
	}

	// diffusers hands every upsampler the size of the next skip tensor when
	// a latent side is not a multiple of 2^(number of upsamplers).
	factor := int64(1) << (len(u.up) - 1)
	forwardSize := sample.Size(2)%factor != 0 || sample.Size(3)%factor != 0
	for i, up := range u.up {
		n := len(up.resnets)
		res := skips[len(skips)-n:]
		skips = skips[:len(skips)-n]
		var size []int64
		if forwardSize && i < len(u.up)-1 {
			size = skips[len(skips)-1].Shape()[2:]
		}
		prev := h
		h = up.forward(h, res, emb, text, size, u.GradientCheckpointing)
		// Free what this block consumed now rather than at the end of the
		// forward (autograd keeps what it needs).
		prev.Close()
		for _, r := range res {
			r.Close()
		}
		u.tap(fmt.Sprintf("up_blocks.%d", i), h)
	}
	h = u.normOut.Forward(h)
	u.tap("conv_norm_out", h)
	h = u.act(h)
	u.tap("conv_act", h)
	h = u.convOut.Forward(h)
	u.tap("conv_out", h)
	return s.Keep(h)
}

// checkInputs validates the latents and text embeddings shared by the UNet
// and the ControlNet, so that bad input fails with a message rather than
// deep inside a block.
func checkInputs(op string, inChannels int, l *blockLayout, sample, text *torch.Tensor) {
	if sample.Dim() != 4 || sample.Size(1) != int64(inChannels) {
		torch.Errorf(op, "sample must be (batch, %d, h, w), got shape %v", inChannels, sample.Shape())
	}
	if text.Dim() != 3 || text.Size(0) != sample.Size(0) {
		torch.Errorf(op, "encoder_hidden_states must be (batch=%d, tokens, dim), got shape %v", sample.Size(0), text.Shape())
	}
	dim := text.Size(2)
	for i, c := range l.crossDim {
		if int64(c) != dim && (l.crossAttn[i] || (i == len(l.crossDim)-1 && l.midType != "")) {
			torch.Errorf(op, "encoder_hidden_states has dim %d, block %d attends to dim %d", dim, i, c)
		}
	}
}

// checkSameShape accepts a residual of the skip tensor's shape, or a
// globally pooled one (B, C, 1, 1) (global_pool_conditions).
func checkSameShape(what string, i int, got, want *torch.Tensor) {
	g, w := got.Shape(), want.Shape()
	pooled := len(g) == 4 && len(w) == 4 && g[0] == w[0] && g[1] == w[1] && g[2] == 1 && g[3] == 1
	if fmt.Sprint(g) != fmt.Sprint(w) && !pooled {
		torch.Errorf("unet", "%s %d has shape %v, want %v", what, i, g, w)
	}
}
