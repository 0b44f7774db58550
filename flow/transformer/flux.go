package transformer

import (
	"fmt"

	"github.com/dp2osr/dp2o/torch"
	"github.com/dp2osr/dp2o/torch/nn"
)

// TapFunc receives named intermediates during a forward pass, in forward
// order. The tensor is valid only during the call: keep it with
// torch.Unscope(t.Alias()) (and close it later).
type TapFunc func(name string, t *torch.Tensor)

// Param is one named parameter of a model (state-dict name).
type Param struct {
	Name   string
	Tensor *torch.Tensor
}

// Flux is diffusers' FluxTransformer2DModel.
type Flux struct {
	Config Config
	// Params owns the weights; Close frees them. The loaders set it; a
	// model built with New leaves it to the caller.
	Params *nn.Params
	// Tap, when set, receives the intermediates of every forward pass:
	// x_embedder, time_proj.timestep, timestep_embedder,
	// time_proj.guidance, guidance_embedder, text_embedder,
	// time_text_embed, context_embedder, pos_embed.cos, pos_embed.sin,
	// transformer_blocks.i.hidden_states (before any ControlNet residual),
	// transformer_blocks.i.encoder_hidden_states,
	// single_transformer_blocks.i (before any residual), norm_out, output.
	Tap TapFunc
	// GradientCheckpointing runs each block through torch.Checkpoint when
	// autograd records: the blocks' activations are recomputed in the
	// backward pass instead of kept (diffusers'
	// enable_gradient_checkpointing). The outputs and gradients are those
	// of the plain forward pass.
	GradientCheckpointing bool

	stem    *stem
	blocks  []*doubleBlock
	singles []*singleBlock
	normOut *nn.Linear
	projOut *nn.Linear
	params  []Param
}

// stem is what the transformer and the ControlNet share before their
// blocks: x_embedder, time_text_embed, context_embedder (pos_embed has no
// weights).
type stem struct {
	cfg     Config
	timeTxt *timeTextEmbed
	context *nn.Linear
	x       *nn.Linear
}

func newStem(b *nn.Builder, c Config) *stem {
	d := c.InnerDim()
	return &stem{
		cfg:     c,
		timeTxt: newTimeTextEmbed(b.Sub("time_text_embed"), c),
		context: nn.NewLinear(b.Sub("context_embedder"), int64(c.JointAttentionDim), d, true),
		x:       nn.NewLinear(b.Sub("x_embedder"), int64(c.InChannels), d, true),
	}
}

// attnMath reports whether attention runs in the exact reference order
// (the CPU, as the fixtures were made) rather than libtorch 2.x's fused
// kernels (CUDA).
func attnMath(b *nn.Builder) bool { return b.Device().Type != torch.DeviceCUDA }

// New builds the transformer, requesting every weight from b under
// diffusers' names. The caller checks b.Finish().
func New(b *nn.Builder, c Config) (f *Flux, err error) {
	if err := c.Validate(); err != nil {
		return nil, err
	}
	defer torch.Recover(&err)
	start := len(b.Params().Names)
	math := attnMath(b)
	d := c.InnerDim()
	f = &Flux{Config: c}
	f.stem = newStem(b, c)
	for i := range c.NumLayers {
		f.blocks = append(f.blocks, newDoubleBlock(b.Sub("transformer_blocks").SubI(i), c, math))
	}
	for i := range c.NumSingleLayers {
		f.singles = append(f.singles, newSingleBlock(b.Sub("single_transformer_blocks").SubI(i), c, math))
	}
	f.normOut = nn.NewLinear(b.Sub("norm_out").Sub("linear"), d, 2*d, true)
	f.projOut = nn.NewLinear(b.Sub("proj_out"), d, c.OutDim(), true)
	f.params = recordParams(b, start)
	return f, nil
}

// recordParams lists the parameters b created since index start, with b's
// prefix stripped.
func recordParams(b *nn.Builder, start int) []Param {
	p := b.Params()
	prefix := b.Prefix()
	if prefix != "" {
		prefix += "."
	}
	var out []Param
	for _, n := range p.Names[start:] {
		out = append(out, Param{Name: n[len(prefix):], Tensor: p.Tensors[n]})
	}
	return out
}

// FromSource builds the transformer from the weights of src (diffusers'
// names); every key of src must be used. The model owns its weights.
func FromSource(src nn.Source, c Config, dtype torch.DType, dev torch.Device) (*Flux, error) {
	if err := checkLayout(src); err != nil {
		return nil, err
	}
	f, p, err := nn.Build(src, dtype, dev, func(b *nn.Builder) (*Flux, error) { return New(b, c) })
	if err != nil {
		return nil, fmt.Errorf("flux transformer: %w", err)
	}
	f.Params = p
	return f, nil
}

// Parameters lists the weights in creation order (the model's own tensors).
func (f *Flux) Parameters() []Param { return f.params }

// NumLayers is the number of double-stream blocks.
func (f *Flux) NumLayers() int { return len(f.blocks) }

// NumSingleLayers is the number of single-stream blocks.
func (f *Flux) NumSingleLayers() int { return len(f.singles) }

// Close frees the weights the model owns. It is idempotent.
func (f *Flux) Close() {
	if f == nil || f.Params == nil {
		return
	}
	f.Params.Close()
	f.Params = nil
}

func (f *Flux) tap(name string, t *torch.Tensor) {
	if f.Tap != nil {
		f.Tap(name, t)
	}
}

// Input holds the arguments of FluxTransformer2DModel.forward (and, but for
// the ControlNet samples, of FluxControlNetModel.forward).
type Input struct {
	// HiddenStates are the packed latents (B, L, in_channels).
	HiddenStates *torch.Tensor
	// EncoderHiddenStates is the text (T5) embedding (B, T, joint_attention_dim).
	EncoderHiddenStates *torch.Tensor
	// PooledProjections is the pooled text (CLIP) embedding (B, pooled_projection_dim).
	PooledProjections *torch.Tensor
	// Timestep is σ = t/1000 as the pipeline passes it, (B) or (1) or 0-d;
	// the model multiplies it by 1000.
	Timestep *torch.Tensor
	// Guidance is the raw guidance scale (B) or (1) or 0-d, required with
	// guidance_embeds and ignored without; the model multiplies it by 1000.
	Guidance *torch.Tensor
	// ImgIDs (L, 3) and TxtIDs (T, 3) are the RoPE positions (ImageIDs,
	// TextIDs); a leading batch dim is accepted and dropped, as diffusers.
	ImgIDs, TxtIDs *torch.Tensor
	// ControlNetBlockSamples are added to the image stream after the
	// double blocks, ControlNetSingleBlockSamples to the image tokens
	// after the single blocks (both optional; interval rule, InjectionIndex).
	ControlNetBlockSamples       []*torch.Tensor
	ControlNetSingleBlockSamples []*torch.Tensor
	// ControlNetBlocksRepeat selects the samples[i % len] rule for the
	// double blocks (diffusers' controlnet_blocks_repeat).
	ControlNetBlocksRepeat bool
}

// InjectionIndex gives, for each of numBlocks blocks, the index of the
// ControlNet sample added after it: i / ceil(numBlocks/numSamples), or
// i % numSamples with repeat (diffusers' controlnet_blocks_repeat).
func InjectionIndex(numBlocks, numSamples int, repeat bool) []int {
	if numSamples <= 0 {
		return nil
	}
	interval := (numBlocks + numSamples - 1) / numSamples
	out := make([]int, numBlocks)
	for i := range out {
		if repeat {
			out[i] = i % numSamples
		} else {
			out[i] = i / interval
		}
	}
	return out
}

// prepared is what the stem computes for the blocks.
type prepared struct {
	x, ctx, temb, siluTemb *torch.Tensor
	rope                   rope
}

// prepare checks the inputs and runs the embedders and RoPE; extra, when
// not nil, is added to x_embedder's output (the ControlNet's conditioning).
func (st *stem) prepare(in Input, tap func(string, *torch.Tensor), extra func(x *torch.Tensor) *torch.Tensor) prepared {
	c := st.cfg
	x0, text, pooled := in.HiddenStates, in.EncoderHiddenStates, in.PooledProjections
	if x0 == nil || text == nil || pooled == nil || in.Timestep == nil || in.ImgIDs == nil || in.TxtIDs == nil {
		torch.Errorf("flux", "hidden_states, encoder_hidden_states, pooled_projections, timestep, img_ids and txt_ids are required")
	}
	if x0.Dim() != 3 || x0.Size(2) != int64(c.InChannels) {
		torch.Errorf("flux", "hidden_states must be packed latents (batch, tokens, %d), got shape %v", c.InChannels, x0.Shape())
	}
	bsz, l := x0.Size(0), x0.Size(1)
	if text.Dim() != 3 || text.Size(0) != bsz || text.Size(2) != int64(c.JointAttentionDim) {
		torch.Errorf("flux", "encoder_hidden_states must be (batch=%d, tokens, %d), got shape %v", bsz, c.JointAttentionDim, text.Shape())
	}
	if pooled.Dim() != 2 || pooled.Size(0) != bsz || pooled.Size(1) != int64(c.PooledProjectionDim) {
		torch.Errorf("flux", "pooled_projections must be (batch=%d, %d), got shape %v", bsz, c.PooledProjectionDim, pooled.Shape())
	}
	imgIDs, txtIDs := dropBatch(in.ImgIDs), dropBatch(in.TxtIDs)
	na := int64(len(c.AxesDimsRope))
	if imgIDs.Dim() != 2 || imgIDs.Size(0) != l || imgIDs.Size(1) != na {
		torch.Errorf("flux", "img_ids must be (%d tokens, %d), got shape %v", l, na, in.ImgIDs.Shape())
	}
	if txtIDs.Dim() != 2 || txtIDs.Size(0) != text.Size(1) || txtIDs.Size(1) != na {
		torch.Errorf("flux", "txt_ids must be (%d tokens, %d), got shape %v", text.Size(1), na, in.TxtIDs.Shape())
	}
	dt := x0.DType()
	var p prepared
	p.x = linear(st.x, x0)
	tap("x_embedder", p.x)
	if extra != nil {
		// x_embedder's output and the conditioning are freed once summed.
		c := extra(x0)
		x := p.x.Add(c)
		p.x.Close()
		c.Close()
		p.x = x
	}
	t := batchVector("timestep", in.Timestep, bsz).To(dt).MulScalar(1000)
	var g *torch.Tensor
	if c.GuidanceEmbeds {
		if in.Guidance == nil {
			torch.Errorf("flux", "guidance is required: the model has a guidance embedding (guidance_embeds)")
		}
		g = batchVector("guidance", in.Guidance, bsz).To(dt).MulScalar(1000)
	}
	p.temb = st.timeTxt.forward(t, g, pooled, tap)
	tap("time_text_embed", p.temb)
	p.siluTemb = p.temb.Silu()
	p.ctx = linear(st.context, text)
	tap("context_embedder", p.ctx)
	ids := torch.Cat([]*torch.Tensor{txtIDs, imgIDs}, 0)
	p.rope.cos, p.rope.sin = posEmbed(ids, c.AxesDimsRope, RopeTheta)
	tap("pos_embed.cos", p.rope.cos)
	tap("pos_embed.sin", p.rope.sin)
	if dev := x0.Device(); dev != p.rope.cos.Device() {
		p.rope.cos, p.rope.sin = p.rope.cos.ToDevice(dev), p.rope.sin.ToDevice(dev)
	}
	p.rope.sin = signedSin(p.rope.sin)
	return p
}

// dropBatch takes ids[0] of 3-d ids, as diffusers does (with a warning).
func dropBatch(ids *torch.Tensor) *torch.Tensor {
	if ids.Dim() == 3 {
		return ids.Select(0, 0)
	}
	return ids
}

// batchVector expands a 0-d, (1) or (B) tensor to (B).
func batchVector(name string, v *torch.Tensor, bsz int64) *torch.Tensor {
	switch {
	case v.Dim() == 0:
		return v.Reshape([]int64{1}).Expand([]int64{bsz})
	case v.Dim() == 1 && v.Size(0) == bsz:
		return v
	case v.Dim() == 1 && v.Size(0) == 1:
		return v.Expand([]int64{bsz})
	}
	torch.Errorf("flux", "%s must be 0-d, (1) or (batch=%d), got shape %v", name, bsz, v.Shape())
	return nil
}

// Forward predicts the velocity (B, L, out) for in. Bad input is returned
// as an error.
func (f *Flux) Forward(in Input) (out *torch.Tensor, err error) {
	defer torch.Recover(&err)
	return f.forward(in), nil
}

func (f *Flux) forward(in Input) *torch.Tensor {
	s := torch.NewScope()
	defer s.Close()
	p := f.stem.prepare(in, f.tap, nil)
	x, ctx := p.x, p.ctx
	bsz, l := x.Size(0), x.Size(1)
	checkSamples("controlnet_block_samples", in.ControlNetBlockSamples, bsz, l, f.Config.InnerDim())
	checkSamples("controlnet_single_block_samples", in.ControlNetSingleBlockSamples, bsz, l, f.Config.InnerDim())
	idx := InjectionIndex(len(f.blocks), len(in.ControlNetBlockSamples), in.ControlNetBlocksRepeat)
	// Without taps, outputs nobody reads are not computed: the text stream
	// of the last double block when no single block follows, the text
	// tokens of the last single block.
	prune := f.Tap == nil
	for i, blk := range f.blocks {
		last := prune && i == len(f.blocks)-1 && len(f.singles) == 0
		nx, nc := doubleForward(f.GradientCheckpointing, blk, x, ctx, p.siluTemb, p.rope, last)
		x.Close()
		if nc != nil {
			ctx.Close()
		}
		x, ctx = nx, nc
		f.tap(fmt.Sprintf("transformer_blocks.%d.encoder_hidden_states", i), ctx)
		f.tap(fmt.Sprintf("transformer_blocks.%d.hidden_states", i), x)
		if idx != nil {
			nx := x.Add(in.ControlNetBlockSamples[idx[i]])
			x.Close()
			x = nx
		}
	}
	h := x
	if len(f.singles) > 0 {
		t := ctx.Size(1)
		h = torch.Cat([]*torch.Tensor{ctx, x}, 1)
		x.Close()
		ctx.Close()
		sidx := InjectionIndex(len(f.singles), len(in.ControlNetSingleBlockSamples), false)
		for i, blk := range f.singles {
			last := prune && i == len(f.singles)-1
			nh := singleForward(f.GradientCheckpointing, blk, h, p.siluTemb, p.rope, last, t)
			h.Close()
			h = nh
			f.tap(fmt.Sprintf("single_transformer_blocks.%d", i), h)
			if sidx != nil {
				res := in.ControlNetSingleBlockSamples[sidx[i]]
				if last {
					nh = h.Add(res)
				} else {
					// Scoped: the narrow views (which keep h's storage) and
					// the sum go with h, not at the end of the forward.
					nh = torch.Scoped(func() *torch.Tensor {
						return torch.Cat([]*torch.Tensor{h.Narrow(1, 0, t), h.Narrow(1, t, l).Add(res)}, 1)
					})
				}
				h.Close()
				h = nh
			}
		}
		if !prunedSingles(prune, len(f.singles)) {
			h = h.Narrow(1, t, l)
		}
	}
	e := linear(f.normOut, p.siluTemb).Chunk(2, 1) // scale, shift
	h = modulate(h, e[0], e[1])
	f.tap("norm_out", h)
	out := linear(f.projOut, h)
	f.tap("output", out)
	return s.Keep(out)
}

// prunedSingles reports whether the last single block returned only image tokens.
func prunedSingles(prune bool, singles int) bool { return prune && singles > 0 }

// checkSamples checks ControlNet residuals are (B, L, D).
func checkSamples(name string, samples []*torch.Tensor, bsz, l, d int64) {
	for i, t := range samples {
		if t == nil {
			torch.Errorf("flux", "%s[%d] is nil", name, i)
		}
		if t.Dim() != 3 || t.Size(0) != bsz || t.Size(1) != l || t.Size(2) != d {
			torch.Errorf("flux", "%s[%d] must be (%d, %d, %d), got shape %v", name, i, bsz, l, d, t.Shape())
		}
	}
}
