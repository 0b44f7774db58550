package flow

import (
	"context"
	"fmt"

	"github.com/dp2osr/dp2o/flow/scheduler"
	"github.com/dp2osr/dp2o/flow/transformer"
	"github.com/dp2osr/dp2o/torch"
)

// SampleOptions are the arguments of the official pipeline call.
type SampleOptions struct {
	Steps             int     // Euler steps (official: 25)
	GuidanceScale     float64 // FLUX.1-dev's distilled guidance embedding (official: 2.5); no real CFG
	ConditioningScale float64 // ControlNet conditioning scale (official: --control_scale 1.0)
	// Progress, when set, is called after each step with (step, total).
	Progress func(step, total int)
	// Latents, when set, are the packed initial latents (B, L, 4·C) —
	// diffusers' `latents` argument, and the fixed noise-pool entry of
	// DP²O-SR's candidate generation (its pipeline's given_noises) — and
	// the second random draw is skipped; the control image's posterior is
	// still drawn from the generator.
	Latents *torch.Tensor
	// Tap, when set, receives the intermediates under the names of the
	// flux/pipeline fixture (rng_draw_0_posterior_noise,
	// control_latents_packed, step.i.noise_pred, …). The tensor is only
	// valid during the call.
	Tap func(name string, t *torch.Tensor)
}

// DefaultSampleOptions are the official defaults.
func DefaultSampleOptions() SampleOptions {
	return SampleOptions{Steps: 25, GuidanceScale: 2.5, ConditioningScale: 1}
}

func (o *SampleOptions) tap(name string, t *torch.Tensor) {
	if o.Tap != nil {
		o.Tap(name, t)
	}
}

func (o *SampleOptions) tapStep(i int, what string, t *torch.Tensor) {
	if o.Tap != nil {
		o.Tap(fmt.Sprintf("step.%d.%s", i, what), t)
	}
}

// Sample encodes one prompt per control image (EncodePrompt) and runs
// SampleEmbeds.
func (p *CFLUX) Sample(ctx context.Context, control *torch.Tensor, prompts []string, o SampleOptions, gen *torch.Generator) (img *torch.Tensor, err error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("flux: cancelled before sampling: %w", err)
	}
	var emb *PromptEmbeds
	p.region(func() { emb, err = p.EncodePrompt(prompts) })
	if err != nil {
		return nil, err
	}
	defer emb.Close()
	return p.SampleEmbeds(ctx, control, emb, o, gen)
}

// region runs f as diffusers' @torch.no_grad() pipeline call, under the
// official script's float16 autocast on CUDA when p.Autocast.
func (p *CFLUX) region(f func()) {
	torch.NoGrad(func() {
		if p.autocasting() {
			torch.Autocast(torch.DeviceCUDA, torch.Float16, f)
			return
		}
		f()
	})
}

// modelDType is the dtype of the text encoders, transformer and
// ControlNet: p.DType, float32 when it is not a floating-point dtype (a
// CFLUX assembled by hand with the zero value).
func (p *CFLUX) modelDType() torch.DType {
	if p.DType.IsFloat() {
		return p.DType
	}
	return torch.Float32
}

// autocasting reports whether calls run under the float16 autocast region.
func (p *CFLUX) autocasting() bool { return p != nil && p.Autocast && p.Device.IsCUDA() }

// SampleEmbeds is FluxControlNetPipeline.__call__ with precomputed prompt
// embeddings, as the official script calls it: control holds B control
// images (B, 3, H, W) in [−1, 1] (H and W multiples of 16; the output has
// the control image's size). It draws, from gen and in diffusers' order,
// the VAE posterior noise of the control image and then the initial
// latents; the Euler steps draw nothing. It returns the decoded images
// (B, 3, H, W) in [0, 1], float32 on the CPU. Cancelling ctx stops between
// steps.
func (p *CFLUX) SampleEmbeds(ctx context.Context, control *torch.Tensor, emb *PromptEmbeds, o SampleOptions, gen *torch.Generator) (img *torch.Tensor, err error) {
	p.region(func() { img, err = p.sample(ctx, control, emb, o, gen) })
	return img, err
}

// CheckSize reports whether an image of w×h can be sampled: both sides
// positive multiples of 16 (VAE factor 8 × 2×2 packing).
func (p *CFLUX) CheckSize(w, h int64) error {
	if err := p.ready(); err != nil {
		return err
	}
	f := int64(2 * p.VAE.Config.DownsampleFactor())
	if w < f || h < f || w%f != 0 || h%f != 0 {
		return fmt.Errorf("flux: image %d×%d: width and height must be positive multiples of %d (VAE factor %d × 2×2 latent packing)", w, h, f, f/2)
	}
	return nil
}

// ready reports a pipeline without its models (nil, closed or partly
// assembled by hand) as an error instead of a nil dereference.
func (p *CFLUX) ready() error {
	if p == nil || p.Transformer == nil || p.ControlNet == nil || p.VAE == nil {
		return fmt.Errorf("flux: the pipeline has no transformer, ControlNet or VAE (not loaded)")
	}
	return nil
}

func (p *CFLUX) sample(ctx context.Context, control *torch.Tensor, emb *PromptEmbeds, o SampleOptions, gen *torch.Generator) (img *torch.Tensor, err error) {
	if err := p.ready(); err != nil {
		return nil, err
	}
	defer torch.Recover(&err)
	scope := torch.NewScope()
	defer scope.Close()

	if control == nil || control.Closed() {
		return nil, fmt.Errorf("flux: control image: nil or closed tensor")
	}
	shape := control.Shape()
	if len(shape) != 4 || shape[1] != int64(p.VAE.Config.InChannels) {
		return nil, fmt.Errorf("flux: control image must be (B, %d, H, W), got %v", p.VAE.Config.InChannels, shape)
	}
	B, H, W := shape[0], shape[2], shape[3]
	if err := p.CheckSize(W, H); err != nil {
		return nil, err
	}
	if emb == nil || emb.Prompt == nil || emb.Pooled == nil || emb.TextIDs == nil {
		return nil, fmt.Errorf("flux: missing prompt embeddings")
	}
	if emb.Prompt.Size(0) != B || emb.Pooled.Size(0) != B {
		return nil, fmt.Errorf("flux: %d control images but prompt embeddings for %d and pooled for %d", B, emb.Prompt.Size(0), emb.Pooled.Size(0))
	}
	if o.Steps < 1 {
		return nil, fmt.Errorf("flux: steps must be positive, got %d", o.Steps)
	}
	if gen == nil {
		return nil, fmt.Errorf("flux: nil generator")
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("flux: cancelled before sampling: %w", err)
	}
	dev := p.Device
	text := emb.Prompt.ToDevice(dev)
	pooled := emb.Pooled.ToDevice(dev)
	if !p.autocasting() {
		// Embeddings made elsewhere (another dtype) are given the models'
		// dtype, which encode_prompt's output has; under autocast they
		// are used as they come, as in the official run.
		if dt := p.modelDType(); text.DType() != dt {
			text = text.To(dt)
		}
		if dt := p.modelDType(); pooled.DType() != dt {
			pooled = pooled.To(dt)
		}
	}
	textIDs := emb.TextIDs.ToDevice(dev)
	o.tap("prompt_embeds", text)
	o.tap("pooled_prompt_embeds", pooled)
	o.tap("text_ids", textIDs)

	// Control latents: VAE posterior sample (random draw 1), shifted and
	// scaled, packed.
	ctrl := control.ToDevice(dev).To(torch.Float32)
	post, err := p.VAE.Encode(ctrl)
	if err != nil {
		return nil, fmt.Errorf("flux: encoding the control image: %w", err)
	}
	defer post.Close()
	eps, err := post.Noise(gen)
	if err != nil {
		return nil, err
	}
	o.tap("rng_draw_0_posterior_noise", eps)
	o.tap("control_latent_mean", post.Mean)
	o.tap("control_latent_std", post.Std)
	z := post.Mean.Add(post.Std.Mul(eps))
	o.tap("control_latent_sample", z)
	cond, err := transformer.PackLatents(p.VAE.ScaleLatents(z))
	if err != nil {
		return nil, err
	}
	if dt := p.modelDType(); !p.autocasting() && cond.DType() != dt {
		// Without autocast (the CPU, --no_autocast) the ControlNet's
		// input embedding needs its weights' dtype; under autocast the
		// latents stay in the VAE's dtype and autocast casts them, as in
		// the official run.
		cond = cond.To(dt)
	}
	o.tap("control_latents_packed", cond)

	// Initial latents (random draw 2) in the prompt embeddings' dtype.
	f := int64(p.VAE.Config.DownsampleFactor())
	lh, lw := 2*(H/(2*f)), 2*(W/(2*f))
	lc := int64(p.Transformer.Config.InChannels / 4)
	var latents *torch.Tensor
	if o.Latents != nil {
		want := []int64{B, (lh / 2) * (lw / 2), 4 * lc}
		if o.Latents.Closed() || fmt.Sprint(o.Latents.Shape()) != fmt.Sprint(want) {
			return nil, fmt.Errorf("flux: given latents must be packed %v for a %d×%d image, got %v", want, W, H, o.Latents.Shape())
		}
		// As prepare_latents: latents.to(device, dtype), no draw.
		latents = o.Latents.ToDevice(dev).To(text.DType())
	} else {
		noise := torch.RandnFor([]int64{B, lc, lh, lw}, gen, text.DType(), dev)
		o.tap("rng_draw_1_initial_noise", noise)
		if latents, err = transformer.PackLatents(noise); err != nil {
			return nil, err
		}
	}
	o.tap("initial_latents_packed", latents)
	imgIDs, err := transformer.ImageIDs(lh/2, lw/2, text.DType(), dev)
	if err != nil {
		return nil, err
	}
	o.tap("latent_image_ids", imgIDs)

	sched, err := p.Scheduler.PipelineSchedule(o.Steps, int(latents.Size(1)))
	if err != nil {
		return nil, err
	}
	if o.Tap != nil {
		sig := torch.FromSlice(sched.Sigmas, int64(len(sched.Sigmas)))
		ts := torch.FromSlice(sched.Timesteps, int64(len(sched.Timesteps)))
		o.tap("sigmas", sig)
		o.tap("timesteps", ts)
	}
	stepper := scheduler.NewStepper(sched)

	for i, t := range sched.Timesteps {
		if err := ctx.Err(); err != nil {
			return nil, fmt.Errorf("flux: cancelled at step %d of %d: %w", i, sched.Steps(), err)
		}
		next, err := p.step(stepper, i, t, latents, cond, text, pooled, textIDs, imgIDs, o)
		if err != nil {
			return nil, fmt.Errorf("flux: step %d of %d: %w", i, sched.Steps(), err)
		}
		latents.Close() // one latent tensor alive at a time
		latents = next
		if o.Progress != nil {
			o.Progress(i+1, sched.Steps())
		}
	}

	// Unpack, z/scale + shift, decode with the float32 VAE, [−1, 1] → [0, 1].
	un, err := transformer.UnpackLatents(latents, lh, lw)
	if err != nil {
		return nil, err
	}
	o.tap("final_latents_unpacked", un)
	zin := p.VAE.UnscaleLatents(un)
	o.tap("vae_decode_input", zin)
	dec, err := p.VAE.Decode(zin.To(torch.Float32))
	if err != nil {
		return nil, fmt.Errorf("flux: decoding: %w", err)
	}
	o.tap("vae_decode_output", dec)
	img = dec.DivScalar(2).AddScalar(0.5).Clamp(0, 1).To(torch.Float32).ToDevice(torch.CPU)
	o.tap("image_float", img)
	return scope.Keep(img), nil
}

// step runs the ControlNet and the transformer at timestep t and the Euler
// update, in its own scope; it returns the new latents.
func (p *CFLUX) step(st *scheduler.Stepper, i int, t float32, latents, cond, text, pooled, textIDs, imgIDs *torch.Tensor, o SampleOptions) (*torch.Tensor, error) {
	s := torch.NewScope()
	defer s.Close()
	B := latents.Size(0)
	o.tapStep(i, "latents_in", latents)
	ts := scheduler.TimestepInput(t, B, latents.DType(), p.Device)
	o.tapStep(i, "timestep_input", ts)
	in := transformer.Input{
		HiddenStates:        latents,
		EncoderHiddenStates: text,
		PooledProjections:   pooled,
		Timestep:            ts,
		ImgIDs:              imgIDs,
		TxtIDs:              textIDs,
	}
	// The ControlNet and the transformer each get the guidance when their
	// own config has the embedding (float32, torch.tensor([scale]).expand(B)).
	if p.ControlNet.Config.GuidanceEmbeds {
		in.Guidance = torch.Full([]int64{B}, o.GuidanceScale, torch.Float32, p.Device)
		o.tapStep(i, "guidance_input", in.Guidance)
	}
	// controlnet_keep is 1 at every step (control_guidance_start/end 0/1).
	blocks, singles, err := p.ControlNet.Forward(in, cond, o.ConditioningScale)
	if err != nil {
		return nil, fmt.Errorf("controlnet: %w", err)
	}
	if o.Tap != nil {
		for k, b := range blocks {
			o.Tap(fmt.Sprintf("step.%d.controlnet_block_samples.%d", i, k), b)
		}
		for k, b := range singles {
			o.Tap(fmt.Sprintf("step.%d.controlnet_single_block_samples.%d", i, k), b)
		}
	}
	in.Guidance = nil
	if p.Transformer.Config.GuidanceEmbeds {
		in.Guidance = torch.Full([]int64{B}, o.GuidanceScale, torch.Float32, p.Device)
	}
	in.ControlNetBlockSamples = blocks
	in.ControlNetSingleBlockSamples = singles
	v, err := p.Transformer.Forward(in)
	if err != nil {
		return nil, fmt.Errorf("transformer: %w", err)
	}
	o.tapStep(i, "noise_pred", v)
	next, err := st.Step(v, t, latents)
	if err != nil {
		return nil, err
	}
	o.tapStep(i, "latents_out", next)
	return s.Keep(next), nil
}
