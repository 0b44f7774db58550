package diffusion

import (
	"context"
	"fmt"

	"github.com/dp2osr/dp2o/diffusion/scheduler"
	"github.com/dp2osr/dp2o/torch"
)

// DefaultNegativePrompt is the official script's --negative_prompt default.
const DefaultNegativePrompt = "dotted, noise, blur, lowres, smooth"

// SampleOptions are the arguments of the official pipeline call.
type SampleOptions struct {
	Steps             int     // DDPM steps (official: 50)
	GuidanceScale     float64 // classifier-free guidance; ≤ 1 turns CFG off (official: 3.5)
	ConditioningScale float64 // ControlNet residual scale (official: 1.0)
	// Progress, when set, is called after each step with (step, total).
	Progress func(step, total int)
	// Tap, when set, receives the intermediates under the names of the
	// pipeline fixture (prompt_embeds, initial_latents, step.i.latents, …).
	// The tensor is only valid during the call.
	Tap func(name string, t *torch.Tensor)
}

// DefaultSampleOptions are the official defaults.
func DefaultSampleOptions() SampleOptions {
	return SampleOptions{Steps: 50, GuidanceScale: 3.5, ConditioningScale: 1}
}

func (o *SampleOptions) tap(name string, t *torch.Tensor) {
	if o.Tap != nil {
		o.Tap(name, t)
	}
}

// tapStep is tap for a per-step name "step.<i>.<what>", formatted only
// when someone listens.
func (o *SampleOptions) tapStep(i int, what string, t *torch.Tensor) {
	if o.Tap != nil {
		o.Tap(fmt.Sprintf("step.%d.%s", i, what), t)
	}
}

// Sample is StableDiffusionControlNetPipeline.__call__ on tensors: control
// holds B control images (B, 3, H, W) in [0, 1] (H, W multiples of 8),
// prompts and negatives one text each. It draws the initial latents and
// then one noise tensor per DDPM step from gen, in diffusers' order, so the
// same seed gives the same output as the reference on the same device. It
// returns the decoded images (B, 3, H, W) in [0, 1], float32 on the CPU.
// Cancelling ctx stops between steps.
//
// With p.Autocast on a CUDA device the whole call runs under float16
// autocast, as the official script's `with torch.autocast("cuda")`.
func (p *SD2) Sample(ctx context.Context, control *torch.Tensor, prompts, negatives []string, o SampleOptions, gen *torch.Generator) (img *torch.Tensor, err error) {
	// Inference only, as diffusers' @torch.no_grad() on the pipeline call:
	// one no-grad (and autocast) region around the whole loop.
	run := func() { img, err = p.sample(ctx, control, prompts, negatives, o, gen) }
	torch.NoGrad(func() {
		if p.Autocast && p.Device.IsCUDA() {
			torch.Autocast(torch.DeviceCUDA, torch.Float16, run)
			return
		}
		run()
	})
	return img, err
}

func (p *SD2) sample(ctx context.Context, control *torch.Tensor, prompts, negatives []string, o SampleOptions, gen *torch.Generator) (img *torch.Tensor, err error) {
	defer torch.Recover(&err)
	scope := torch.NewScope()
	defer scope.Close()

	shape := control.Shape()
	if len(shape) != 4 || shape[1] != 3 {
		return nil, fmt.Errorf("sd2: control image must be (B, 3, H, W), got %v", shape)
	}
	B, H, W := shape[0], shape[2], shape[3]
	f := int64(p.VAE.Config.DownsampleFactor())
	if H%f != 0 || W%f != 0 || H < f || W < f {
		return nil, fmt.Errorf("sd2: control image %d×%d: sides must be positive multiples of %d", W, H, f)
	}
	if int64(len(prompts)) != B || (len(negatives) != 0 && int64(len(negatives)) != B) {
		return nil, fmt.Errorf("sd2: %d control images but %d prompts and %d negative prompts", B, len(prompts), len(negatives))
	}
	if o.Steps <= 0 {
		return nil, fmt.Errorf("sd2: steps must be positive, got %d", o.Steps)
	}
	cfg := o.GuidanceScale > 1
	if len(negatives) == 0 {
		negatives = make([]string, B)
	}

	sched, err := scheduler.NewDDPM(p.Scheduler)
	if err != nil {
		return nil, err
	}
	defer sched.Close()
	if err := sched.SetTimesteps(o.Steps); err != nil {
		return nil, err
	}

	// 1. Text: [negatives…, positives…] when guiding.
	pos, err := p.encodePrompts(prompts)
	if err != nil {
		return nil, err
	}
	o.tap("prompt_embeds", pos)
	text := pos
	if cfg {
		neg, err := p.encodePrompts(negatives)
		if err != nil {
			return nil, err
		}
		o.tap("negative_prompt_embeds", neg)
		text = torch.Cat([]*torch.Tensor{neg, pos}, 0)
	}

	// 2. Control in [0, 1], duplicated for CFG.
	cond := control.ToDevice(p.Device).To(p.DType)
	if cfg {
		cond = torch.Cat([]*torch.Tensor{cond, cond}, 0)
	}

	// 3. Initial latents, drawn like diffusers' randn_tensor.
	lc := int64(p.UNet.Config.InChannels)
	latents := torch.RandnFor([]int64{B, lc, H / f, W / f}, gen, p.DType, p.Device)
	if s := sched.InitNoiseSigma(); s != 1 {
		latents = latents.MulScalar(s)
	}
	o.tap("initial_latents", latents)

	// 4. Denoise.
	steps := sched.Timesteps()
	for i, t := range steps {
		if err := ctx.Err(); err != nil {
			return nil, fmt.Errorf("sd2: cancelled at step %d of %d: %w", i, len(steps), err)
		}
		next := p.step(sched, i, t, latents, text, cond, cfg, o, gen)
		latents.Close() // one latent tensor alive at a time
		latents = next
		if o.Progress != nil {
			o.Progress(i+1, len(steps))
		}
	}

	// 5. latents / scaling_factor in the latents' dtype (as diffusers), then
	// decode with the float32 VAE and map [-1, 1] → [0, 1].
	z := latents.DivScalar(p.VAE.Config.ScalingFactor).To(torch.Float32)
	o.tap("decode_input", z)
	dec, err := p.VAE.Decode(z)
	if err != nil {
		return nil, err
	}
	img = dec.MulScalar(0.5).AddScalar(0.5).Clamp(0, 1).ToDevice(torch.CPU)
	return scope.Keep(img), nil
}

// step runs one denoising step in its own scope and returns the new latents.
func (p *SD2) step(sched *scheduler.DDPM, i int, t int64, latents, text, cond *torch.Tensor, cfg bool, o SampleOptions, gen *torch.Generator) *torch.Tensor {
	s := torch.NewScope()
	defer s.Close()
	x := latents
	if cfg {
		x = torch.Cat([]*torch.Tensor{latents, latents}, 0)
	}
	x = sched.ScaleModelInput(x, t)
	ts := torch.ScalarOf(float64(t), torch.Int64, p.Device)
	res := p.ControlNet.Forward(x, ts, text, cond, o.ConditioningScale)
	o.tapStep(i, "controlnet_mid_block_res_sample", res.Mid)
	eps := p.UNet.Forward(x, ts, text, res)
	if cfg {
		parts := eps.Chunk(2, 0)
		u, c := parts[0], parts[1]
		o.tapStep(i, "noise_pred_uncond", u)
		o.tapStep(i, "noise_pred_text", c)
		eps = u.Add(c.Sub(u).MulScalar(o.GuidanceScale))
		o.tapStep(i, "noise_pred_guided", eps)
	}
	prev, _ := sched.Step(eps, t, latents, gen)
	o.tapStep(i, "latents", prev)
	return s.Keep(prev)
}

// encodePrompts tokenizes texts (padding to 77 with the folder's pad token)
// and returns the text encoder's last hidden state in the pipeline dtype.
func (p *SD2) encodePrompts(texts []string) (*torch.Tensor, error) {
	ids, _ := p.Tokenizer.EncodeBatch(texts)
	flat := make([]int64, 0, len(ids)*p.Tokenizer.MaxLength())
	for _, row := range ids {
		flat = append(flat, row...)
	}
	t := torch.FromSlice(flat, int64(len(ids)), int64(p.Tokenizer.MaxLength()))
	enc, err := p.TextEncoder.Encode(t)
	if err != nil {
		return nil, fmt.Errorf("sd2: text encoder: %w", err)
	}
	defer enc.Close()
	return enc.LastHidden.To(p.DType), nil
}
