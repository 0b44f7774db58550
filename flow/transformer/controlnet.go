package transformer

import (
	"fmt"
	"path/filepath"
	"strings"

	"github.com/dp2osr/dp2o/torch"
	"github.com/dp2osr/dp2o/torch/nn"
)

// ControlNet is diffusers' FluxControlNetModel without union mode or
// input_hint_block (the C-FLUX / DP²O-FLUX ControlNet): the transformer's
// stem and first blocks, the control latents added through
// controlnet_x_embedder, and one zero-initialised linear per block
// (controlnet_blocks, controlnet_single_blocks) giving the residuals.
type ControlNet struct {
	Config Config
	// Params owns the weights; Close frees them.
	Params *nn.Params
	// Tap receives x_embedder, controlnet_x_embedder, the stem's
	// intermediates (as Flux.Tap), transformer_blocks.i.hidden_states /
	// encoder_hidden_states, single_transformer_blocks.i and
	// controlnet_blocks.i / controlnet_single_blocks.i (before the
	// conditioning scale).
	Tap TapFunc
	// GradientCheckpointing runs each block through torch.Checkpoint when
	// autograd records (as Flux.GradientCheckpointing).
	GradientCheckpointing bool

	stem       *stem
	condX      *nn.Linear
	blocks     []*doubleBlock
	singles    []*singleBlock
	outBlocks  []*nn.Linear
	outSingles []*nn.Linear
	params     []Param
}

// NewControlNet builds the ControlNet of c, requesting every weight from b
// in diffusers' creation order. The caller checks b.Finish().
func NewControlNet(b *nn.Builder, c Config) (cn *ControlNet, err error) {
	if err := c.Validate(); err != nil {
		return nil, err
	}
	defer torch.Recover(&err)
	start := len(b.Params().Names)
	math := attnMath(b)
	d := c.InnerDim()
	cn = &ControlNet{Config: c, stem: newStem(b, c)}
	for i := range c.NumLayers {
		cn.blocks = append(cn.blocks, newDoubleBlock(b.Sub("transformer_blocks").SubI(i), c, math))
	}
	for i := range c.NumSingleLayers {
		cn.singles = append(cn.singles, newSingleBlock(b.Sub("single_transformer_blocks").SubI(i), c, math))
	}
	for i := range c.NumLayers {
		cn.outBlocks = append(cn.outBlocks, nn.NewLinear(b.Sub("controlnet_blocks").SubI(i), d, d, true))
	}
	for i := range c.NumSingleLayers {
		cn.outSingles = append(cn.outSingles, nn.NewLinear(b.Sub("controlnet_single_blocks").SubI(i), d, d, true))
	}
	cn.condX = nn.NewLinear(b.Sub("controlnet_x_embedder"), int64(c.InChannels), d, true)
	cn.params = recordParams(b, start)
	return cn, nil
}

// ControlNetFromSource builds the ControlNet of c from src (diffusers'
// names, every key used).
func ControlNetFromSource(src nn.Source, c Config, dtype torch.DType, dev torch.Device) (*ControlNet, error) {
	if err := checkLayout(src); err != nil {
		return nil, err
	}
	cn, p, err := nn.Build(src, dtype, dev, func(b *nn.Builder) (*ControlNet, error) { return NewControlNet(b, c) })
	if err != nil {
		return nil, fmt.Errorf("flux controlnet (%d double, %d single blocks): %w", c.NumLayers, c.NumSingleLayers, err)
	}
	cn.Params = p
	return cn, nil
}

// LoadControlNet reads a save_pretrained FluxControlNetModel folder
// (config.json and diffusion_pytorch_model.safetensors or its index).
func LoadControlNet(dir string, dtype torch.DType, dev torch.Device) (*ControlNet, error) {
	cfg, err := LoadConfig(filepath.Join(dir, "config.json"))
	if err != nil {
		return nil, err
	}
	path, err := weightsPath(dir)
	if err != nil {
		return nil, fmt.Errorf("flux controlnet: %w", err)
	}
	return LoadControlNetFile(path, cfg, dtype, dev)
}

// LoadControlNetFile reads a flat ControlNet state dict — the released
// C-FLUX / DP²O-FLUX model.safetensors, strict as load_state_dict — whose
// configuration is cfg (ControlNetConfigFromTransformer of the FLUX
// transformer's config, with the layers the checkpoint was trained with).
func LoadControlNetFile(path string, cfg Config, dtype torch.DType, dev torch.Device) (*ControlNet, error) {
	return nn.LoadFile(path, func(src nn.Source) (*ControlNet, error) { return ControlNetFromSource(src, cfg, dtype, dev) })
}

// ControlNetOptions are from_transformer's arguments.
type ControlNetOptions struct {
	NumLayers, NumSingleLayers int
	// AttentionHeadDim and NumAttentionHeads override the transformer's
	// (0: the transformer's). A layout other than the transformer's cannot
	// take its weights and fails.
	AttentionHeadDim, NumAttentionHeads int
}

// ControlNetFromTransformer does what FluxControlNetModel.from_transformer
// does: a ControlNet with f's configuration and opts' block counts whose
// stem (time_text_embed, context_embedder, x_embedder) and blocks start as
// copies of the transformer's first blocks, and whose controlnet_x_embedder,
// controlnet_blocks and controlnet_single_blocks start at zero, so that the
// new ControlNet adds nothing until trained. The weights are new tensors of
// f's dtype on f's device, owned by the result.
func ControlNetFromTransformer(f *Flux, opts ControlNetOptions) (cn *ControlNet, err error) {
	if f == nil || f.Params == nil && len(f.params) == 0 {
		return nil, fmt.Errorf("flux controlnet from_transformer: no transformer weights")
	}
	cfg := ControlNetConfigFromTransformer(f.Config, opts.NumLayers, opts.NumSingleLayers)
	if opts.AttentionHeadDim > 0 {
		cfg.AttentionHeadDim = opts.AttentionHeadDim
	}
	if opts.NumAttentionHeads > 0 {
		cfg.NumAttentionHeads = opts.NumAttentionHeads
	}
	if cfg.NumLayers > f.NumLayers() || cfg.NumSingleLayers > f.NumSingleLayers() {
		return nil, fmt.Errorf("flux controlnet from_transformer: %d double / %d single blocks, the transformer has %d / %d",
			cfg.NumLayers, cfg.NumSingleLayers, f.NumLayers(), f.NumSingleLayers())
	}
	ref := f.params[0].Tensor
	b := nn.NewBuilder(nil, ref.DType(), ref.Device())
	cn, err = NewControlNet(b, cfg)
	if err != nil {
		b.Params().Close()
		return nil, fmt.Errorf("flux controlnet from_transformer: %w", err)
	}
	p, err := b.Finish()
	if err != nil {
		return nil, fmt.Errorf("flux controlnet from_transformer: %w", err)
	}
	cn.Params = p
	src := map[string]*torch.Tensor{}
	for _, q := range f.params {
		src[q.Name] = q.Tensor
	}
	err = torch.Try(func() {
		torch.NoGrad(func() {
			for _, q := range cn.params {
				if strings.HasPrefix(q.Name, "controlnet_") {
					q.Tensor.Zero_()
					continue
				}
				w, ok := src[q.Name]
				if !ok {
					torch.Errorf("from_transformer", "the transformer has no weight %q", q.Name)
				}
				if fmt.Sprint(w.Shape()) != fmt.Sprint(q.Tensor.Shape()) {
					torch.Errorf("from_transformer", "%s: transformer %v, ControlNet %v", q.Name, w.Shape(), q.Tensor.Shape())
				}
				q.Tensor.Copy_(w)
			}
		})
	})
	if err != nil {
		cn.Close()
		return nil, fmt.Errorf("flux controlnet: %w", err)
	}
	return cn, nil
}

// Parameters lists the weights in creation order (the model's own tensors).
func (cn *ControlNet) Parameters() []Param { return cn.params }

// Close frees the weights the model owns. It is idempotent.
func (cn *ControlNet) Close() {
	if cn == nil || cn.Params == nil {
		return
	}
	cn.Params.Close()
	cn.Params = nil
}

func (cn *ControlNet) tap(name string, t *torch.Tensor) {
	if cn.Tap != nil {
		cn.Tap(name, t)
	}
}

// Forward runs the ControlNet on in (its ControlNet sample fields are
// ignored) with the packed control latents controlnetCond (B, L,
// in_channels) and returns the residuals for the transformer, each
// multiplied by conditioningScale: one per double block (B, L, D), and one
// per single block (nil when there are none).
func (cn *ControlNet) Forward(in Input, controlnetCond *torch.Tensor, conditioningScale float64) (blockSamples, singleBlockSamples []*torch.Tensor, err error) {
	defer torch.Recover(&err)
	blockSamples, singleBlockSamples = cn.forward(in, controlnetCond, conditioningScale)
	return blockSamples, singleBlockSamples, nil
}

func (cn *ControlNet) forward(in Input, cond *torch.Tensor, scale float64) (blocks, singles []*torch.Tensor) {
	s := torch.NewScope()
	defer s.Close()
	if cond == nil || in.HiddenStates == nil || fmt.Sprint(cond.Shape()) != fmt.Sprint(in.HiddenStates.Shape()) {
		var got, want any = nil, nil
		if cond != nil {
			got = cond.Shape()
		}
		if in.HiddenStates != nil {
			want = in.HiddenStates.Shape()
		}
		torch.Errorf("flux controlnet", "controlnet_cond must have the shape of hidden_states %v, got %v", want, got)
	}
	p := cn.stem.prepare(in, cn.tap, func(x0 *torch.Tensor) *torch.Tensor {
		c := linear(cn.condX, cond)
		cn.tap("controlnet_x_embedder", c)
		return c
	})
	x, ctx := p.x, p.ctx
	// Without taps, outputs nobody reads are not computed: the text stream
	// of the last double block when no single block follows, the text
	// tokens of the last single block.
	prune := cn.Tap == nil
	var feats []*torch.Tensor
	for i, blk := range cn.blocks {
		var nc *torch.Tensor
		x, nc = doubleForward(cn.GradientCheckpointing, blk, x, ctx, p.siluTemb, p.rope, prune && i == len(cn.blocks)-1 && len(cn.singles) == 0)
		// x stays in feats; the text stream is read only by the next block.
		ctx.Close()
		ctx = nc
		cn.tap(fmt.Sprintf("transformer_blocks.%d.encoder_hidden_states", i), ctx)
		cn.tap(fmt.Sprintf("transformer_blocks.%d.hidden_states", i), x)
		feats = append(feats, x)
	}
	var sfeats []*torch.Tensor
	if len(cn.singles) > 0 {
		t, l := ctx.Size(1), x.Size(1)
		h := torch.Cat([]*torch.Tensor{ctx, x}, 1)
		for i, blk := range cn.singles {
			last := prune && i == len(cn.singles)-1
			h = singleForward(cn.GradientCheckpointing, blk, h, p.siluTemb, p.rope, last, t)
			cn.tap(fmt.Sprintf("single_transformer_blocks.%d", i), h)
			if last {
				sfeats = append(sfeats, h)
			} else {
				sfeats = append(sfeats, h.Narrow(1, t, l))
			}
		}
	}
	for i, ft := range feats {
		o := linear(cn.outBlocks[i], ft)
		cn.tap(fmt.Sprintf("controlnet_blocks.%d", i), o)
		blocks = append(blocks, o.MulScalar(scale))
	}
	for i, ft := range sfeats {
		o := linear(cn.outSingles[i], ft)
		cn.tap(fmt.Sprintf("controlnet_single_blocks.%d", i), o)
		singles = append(singles, o.MulScalar(scale))
	}
	s.KeepAll(blocks)
	s.KeepAll(singles)
	return blocks, singles
}
