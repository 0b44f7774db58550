package sample

import (
	"context"
	"fmt"

	"github.com/dp2osr/dp2o/diffusion"
	"github.com/dp2osr/dp2o/diffusion/colorfix"
	"github.com/dp2osr/dp2o/diffusion/scheduler"
	"github.com/dp2osr/dp2o/imageio"
	"github.com/dp2osr/dp2o/torch"
)

// SD2 samples C-SD2 candidates: the official test_sd2b_controlnet.py
// pipeline (diffusion.(*SD2).Upscale: resize rules, DDPM with CFG, colour
// fix, resize back) for a batch of seeds of one LR image at once. Each
// candidate draws its initial latents and its per-step DDPM noise from its
// own generator seeded with its seed, so candidate (image, seed) is the
// same image whatever batch it is sampled in, up to floating-point
// reassociation of the batched networks; with a batch of one it is bit for
// bit (*SD2).Upscale with a generator seeded with the seed.
type SD2 struct {
	P    *diffusion.SD2
	Opts diffusion.UpscaleOptions
}

// Name is "sd2".
func (s *SD2) Name() string { return "sd2" }

// Device is where the pipeline runs (and where the generators live).
func (s *SD2) Device() torch.Device { return s.P.Device }

// Candidates samples one candidate per seed for lr with prompt.
func (s *SD2) Candidates(ctx context.Context, lr *imageio.RGB8, prompt string, seeds []uint64) ([]*imageio.RGB8, error) {
	if s == nil || s.P == nil || s.P.UNet == nil || s.P.ControlNet == nil || s.P.VAE == nil {
		return nil, fmt.Errorf("sd2: the pipeline is not loaded")
	}
	if lr == nil || lr.W < 1 || lr.H < 1 {
		return nil, fmt.Errorf("sd2: empty image")
	}
	if len(seeds) == 0 {
		return nil, nil
	}
	proc, plan, err := imageio.Prepare(lr, s.Opts.ProcessSize, s.Opts.Upscale)
	if err != nil {
		return nil, err
	}
	control, err := colorfix.ToTensor(proc.Pix, proc.W, proc.H)
	if err != nil {
		return nil, err
	}
	defer control.Close()
	gens, err := generators(s.P.Device, seeds)
	if err != nil {
		return nil, err
	}
	var out *torch.Tensor
	run := func() { out, err = s.sample(ctx, control, prompt, gens) }
	torch.NoGrad(func() {
		if s.P.Autocast && s.P.Device.IsCUDA() {
			torch.Autocast(torch.DeviceCUDA, torch.Float16, run)
			return
		}
		run()
	})
	if err != nil {
		return nil, err
	}
	defer out.Close()
	return finish(out, proc, plan, s.Opts.AlignMethod)
}

// sample is diffusers' StableDiffusionControlNetPipeline.__call__ for B
// copies of one control image and prompt, with one generator per copy.
func (s *SD2) sample(ctx context.Context, control *torch.Tensor, prompt string, gens []*torch.Generator) (img *torch.Tensor, err error) {
	defer torch.Recover(&err)
	scope := torch.NewScope()
	defer scope.Close()
	p, o := s.P, s.Opts.SampleOptions
	B := int64(len(gens))
	H, W := control.Size(2), control.Size(3)
	f := int64(p.VAE.Config.DownsampleFactor())
	if H%f != 0 || W%f != 0 {
		return nil, fmt.Errorf("sd2: control image %d×%d: sides must be multiples of %d", W, H, f)
	}
	if o.Steps <= 0 {
		return nil, fmt.Errorf("sd2: steps must be positive, got %d", o.Steps)
	}
	cfg := o.GuidanceScale > 1
	sched, err := scheduler.NewDDPM(p.Scheduler)
	if err != nil {
		return nil, err
	}
	defer sched.Close()
	if err := sched.SetTimesteps(o.Steps); err != nil {
		return nil, err
	}

	// The prompt is encoded once and shared by the batch: [negatives…, positives…].
	pos, err := encode(p, prompt)
	if err != nil {
		return nil, err
	}
	text := expand(pos, B)
	if cfg {
		neg, err := encode(p, s.Opts.NegativePrompt)
		if err != nil {
			return nil, err
		}
		text = torch.Cat([]*torch.Tensor{expand(neg, B), text}, 0)
	}
	cond := expand(control.ToDevice(p.Device).To(p.DType), B)
	if cfg {
		cond = torch.Cat([]*torch.Tensor{cond, cond}, 0)
	}

	lc := int64(p.UNet.Config.InChannels)
	latents := drawEach(gens, []int64{1, lc, H / f, W / f}, p.DType, p.Device)
	if sig := sched.InitNoiseSigma(); sig != 1 {
		latents = latents.MulScalar(sig)
	}
	steps := sched.Timesteps()
	for i, t := range steps {
		if err := ctx.Err(); err != nil {
			return nil, fmt.Errorf("sd2: cancelled at step %d of %d: %w", i, len(steps), err)
		}
		next := s.step(sched, t, latents, text, cond, cfg, gens)
		latents.Close()
		latents = next
		if o.Progress != nil {
			o.Progress(i+1, len(steps))
		}
	}
	z := latents.DivScalar(p.VAE.Config.ScalingFactor).To(torch.Float32)
	dec, err := p.VAE.Decode(z)
	if err != nil {
		return nil, err
	}
	img = dec.MulScalar(0.5).AddScalar(0.5).Clamp(0, 1).ToDevice(torch.CPU)
	return scope.Keep(img), nil
}

// step is one guided DDPM step; the variance noise of row j comes from gens[j].
func (s *SD2) step(sched *scheduler.DDPM, t int64, latents, text, cond *torch.Tensor, cfg bool, gens []*torch.Generator) *torch.Tensor {
	sc := torch.NewScope()
	defer sc.Close()
	p, o := s.P, s.Opts.SampleOptions
	x := latents
	if cfg {
		x = torch.Cat([]*torch.Tensor{latents, latents}, 0)
	}
	x = sched.ScaleModelInput(x, t)
	ts := torch.ScalarOf(float64(t), torch.Int64, p.Device)
	res := p.ControlNet.Forward(x, ts, text, cond, o.ConditioningScale)
	eps := p.UNet.Forward(x, ts, text, res)
	if cfg {
		parts := eps.Chunk(2, 0)
		u, c := parts[0], parts[1]
		eps = u.Add(c.Sub(u).MulScalar(o.GuidanceScale))
	}
	var noise *torch.Tensor
	if t > 0 {
		sh := eps.Shape()
		sh[0] = 1
		noise = drawEach(gens, sh, eps.DType(), eps.Device())
	}
	prev, _ := sched.StepWithNoise(eps, t, latents, noise)
	return sc.Keep(prev)
}

// encode is the pipeline's prompt encoding (CLIP, padded to the
// tokenizer's length) of one text, in the pipeline dtype: (1, L, D).
func encode(p *diffusion.SD2, text string) (*torch.Tensor, error) {
	ids, _ := p.Tokenizer.EncodeBatch([]string{text})
	t := torch.FromSlice(ids[0], 1, int64(p.Tokenizer.MaxLength()))
	enc, err := p.TextEncoder.Encode(t)
	if err != nil {
		return nil, fmt.Errorf("sd2: text encoder: %w", err)
	}
	defer enc.Close()
	return enc.LastHidden.To(p.DType), nil
}
