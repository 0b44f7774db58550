package sample

import (
	"context"
	"fmt"

	"github.com/dp2osr/dp2o/flow"
	fsched "github.com/dp2osr/dp2o/flow/scheduler"
	"github.com/dp2osr/dp2o/flow/transformer"
	"github.com/dp2osr/dp2o/imageio"
	"github.com/dp2osr/dp2o/torch"
)

// FLUX samples C-FLUX candidates: the official test_flux_controlnet.py
// pipeline (flow.(*CFLUX).Upscale: resize rules, control image in [−1, 1],
// 25 Euler steps with the guidance embedding, colour fix, resize back) for
// a batch of seeds of one LR image at once. Each candidate draws its VAE
// posterior noise and then its initial latents from its own generator
// seeded with its seed; with a batch of one a candidate is bit for bit
// (*CFLUX).Upscale with a generator seeded with the seed.
type FLUX struct {
	P    *flow.CFLUX
	Opts flow.UpscaleOptions
}

// Name is "flux".
func (s *FLUX) Name() string { return "flux" }

// Device is where the pipeline runs (and where the generators live).
func (s *FLUX) Device() torch.Device { return s.P.Device }

// Candidates samples one candidate per seed for lr with prompt.
func (s *FLUX) Candidates(ctx context.Context, lr *imageio.RGB8, prompt string, seeds []uint64) ([]*imageio.RGB8, error) {
	p := s.P
	if s == nil || p == nil || p.Transformer == nil || p.ControlNet == nil || p.VAE == nil {
		return nil, fmt.Errorf("flux: the pipeline is not loaded")
	}
	if lr == nil || lr.W < 1 || lr.H < 1 {
		return nil, fmt.Errorf("flux: empty image")
	}
	if len(seeds) == 0 {
		return nil, nil
	}
	proc, plan, err := imageio.Prepare(lr, s.Opts.ProcessSize, s.Opts.Upscale)
	if err != nil {
		return nil, err
	}
	m := int(2 * p.VAE.Config.DownsampleFactor())
	pw, ph := proc.W, proc.H
	if s.Opts.PadTo16 {
		pw, ph = (pw+m-1)/m*m, (ph+m-1)/m*m
	}
	if err := p.CheckSize(int64(pw), int64(ph)); err != nil {
		return nil, fmt.Errorf("%w (processing size %d×%d from a %d×%d input)", err, proc.W, proc.H, lr.W, lr.H)
	}
	control, err := flow.ControlTensor(proc)
	if err != nil {
		return nil, err
	}
	defer func() { control.Close() }()
	if pw != proc.W || ph != proc.H {
		padded := torch.Scoped(func() *torch.Tensor {
			return control.Pad([]int64{0, int64(pw - proc.W), 0, int64(ph - proc.H)}, torch.PadReplicate, 0)
		})
		control.Close()
		control = padded
	}
	gens, err := generators(p.Device, seeds)
	if err != nil {
		return nil, err
	}
	var out *torch.Tensor
	run := func() { out, err = s.sample(ctx, control, prompt, gens) }
	torch.NoGrad(func() {
		if p.Autocast && p.Device.IsCUDA() {
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

func (s *FLUX) modelDType() torch.DType {
	if s.P.DType.IsFloat() {
		return s.P.DType
	}
	return torch.Float32
}

// sample is diffusers' FluxControlNetPipeline.__call__ for B copies of one
// control image and prompt, with one generator per copy.
func (s *FLUX) sample(ctx context.Context, control *torch.Tensor, prompt string, gens []*torch.Generator) (img *torch.Tensor, err error) {
	defer torch.Recover(&err)
	scope := torch.NewScope()
	defer scope.Close()
	p, o := s.P, s.Opts.SampleOptions
	autocast := p.Autocast && p.Device.IsCUDA()
	B := int64(len(gens))
	H, W := control.Size(2), control.Size(3)
	if o.Steps < 1 {
		return nil, fmt.Errorf("flux: steps must be positive, got %d", o.Steps)
	}
	emb, err := p.EncodePrompt([]string{prompt})
	if err != nil {
		return nil, err
	}
	defer emb.Close()
	dev := p.Device
	text, pooled := emb.Prompt.ToDevice(dev), emb.Pooled.ToDevice(dev)
	if dt := s.modelDType(); !autocast && text.DType() != dt {
		text = text.To(dt)
	}
	if dt := s.modelDType(); !autocast && pooled.DType() != dt {
		pooled = pooled.To(dt)
	}
	text, pooled = expand(text, B), expand(pooled, B)
	textIDs := emb.TextIDs.ToDevice(dev)

	// Control latents: one encoding, one posterior draw per candidate.
	post, err := p.VAE.Encode(control.ToDevice(dev).To(torch.Float32))
	if err != nil {
		return nil, fmt.Errorf("flux: encoding the control image: %w", err)
	}
	defer post.Close()
	eps := drawEach(gens, post.Mean.Shape(), post.Mean.DType(), post.Mean.Device())
	z := post.Mean.Add(post.Std.Mul(eps))
	cond, err := transformer.PackLatents(p.VAE.ScaleLatents(z))
	if err != nil {
		return nil, err
	}
	if dt := s.modelDType(); !autocast && cond.DType() != dt {
		cond = cond.To(dt)
	}

	f := int64(p.VAE.Config.DownsampleFactor())
	lh, lw := 2*(H/(2*f)), 2*(W/(2*f))
	lc := int64(p.Transformer.Config.InChannels / 4)
	noise := drawEach(gens, []int64{1, lc, lh, lw}, text.DType(), dev)
	latents, err := transformer.PackLatents(noise)
	if err != nil {
		return nil, err
	}
	imgIDs, err := transformer.ImageIDs(lh/2, lw/2, text.DType(), dev)
	if err != nil {
		return nil, err
	}
	sched, err := p.Scheduler.PipelineSchedule(o.Steps, int(latents.Size(1)))
	if err != nil {
		return nil, err
	}
	stepper := fsched.NewStepper(sched)
	for i, t := range sched.Timesteps {
		if err := ctx.Err(); err != nil {
			return nil, fmt.Errorf("flux: cancelled at step %d of %d: %w", i, sched.Steps(), err)
		}
		next, err := s.step(stepper, t, latents, cond, text, pooled, textIDs, imgIDs)
		if err != nil {
			return nil, fmt.Errorf("flux: step %d of %d: %w", i, sched.Steps(), err)
		}
		latents.Close()
		latents = next
		if o.Progress != nil {
			o.Progress(i+1, sched.Steps())
		}
	}
	un, err := transformer.UnpackLatents(latents, lh, lw)
	if err != nil {
		return nil, err
	}
	dec, err := p.VAE.Decode(p.VAE.UnscaleLatents(un).To(torch.Float32))
	if err != nil {
		return nil, fmt.Errorf("flux: decoding: %w", err)
	}
	img = dec.DivScalar(2).AddScalar(0.5).Clamp(0, 1).To(torch.Float32).ToDevice(torch.CPU)
	return scope.Keep(img), nil
}

// step runs the ControlNet, the transformer and the Euler update at t.
func (s *FLUX) step(st *fsched.Stepper, t float32, latents, cond, text, pooled, textIDs, imgIDs *torch.Tensor) (*torch.Tensor, error) {
	sc := torch.NewScope()
	defer sc.Close()
	p, o := s.P, s.Opts.SampleOptions
	B := latents.Size(0)
	in := transformer.Input{
		HiddenStates:        latents,
		EncoderHiddenStates: text,
		PooledProjections:   pooled,
		Timestep:            fsched.TimestepInput(t, B, latents.DType(), p.Device),
		ImgIDs:              imgIDs,
		TxtIDs:              textIDs,
	}
	if p.ControlNet.Config.GuidanceEmbeds {
		in.Guidance = torch.Full([]int64{B}, o.GuidanceScale, torch.Float32, p.Device)
	}
	blocks, singles, err := p.ControlNet.Forward(in, cond, o.ConditioningScale)
	if err != nil {
		return nil, fmt.Errorf("controlnet: %w", err)
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
	next, err := st.Step(v, t, latents)
	if err != nil {
		return nil, err
	}
	return sc.Keep(next), nil
}
