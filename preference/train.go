package preference

import (
	"errors"
	"fmt"
	"math"
	"runtime"

	"github.com/dp2osr/dp2o/torch"
	"github.com/dp2osr/dp2o/torch/optim"
)

// Batch is one batch of P preference pairs as a DPO training step takes
// it. Every tensor has the P pairs as its first dimension; the winner and
// the loser of pair j share Noise[j], the timestep, the conditioning and
// the weight (Diffusion-DPO). The step builds the doubled batch
// [winners; losers] from it.
type Batch struct {
	// X0W and X0L are the clean latents of the winners and the losers:
	// (P, C, h, w) scaled VAE latents for SD2, packed (P, L, 64) for FLUX.
	X0W, X0L *torch.Tensor
	// Noise is ε, one per pair, of X0W's shape.
	Noise *torch.Tensor
	// Timesteps: SD2 int64 t ∈ [0, T) (P,); FLUX the float32 value both
	// models get as timestep (scheduler timestep / 1000) (P,).
	Timesteps *torch.Tensor
	// Sigmas are FLUX's noise levels σ (P,) for x_σ = (1−σ)·x0 + σ·ε;
	// unused by SD2.
	Sigmas []float32
	// Control is the conditioning the ControlNet takes: SD2 the LR image
	// (P, 3, 8h, 8w) in [0, 1]; FLUX the packed control latents (P, L, 64).
	Control *torch.Tensor
	// Text is the prompt embedding (P, T, D): CLIP's last hidden state for
	// SD2, T5's for FLUX.
	Text *torch.Tensor
	// Pooled is FLUX's pooled CLIP embedding (P, D); unused by SD2.
	Pooled *torch.Tensor
	// ImgIDs (L, 3) and TxtIDs (T, 3) are FLUX's RoPE positions; unused by SD2.
	ImgIDs, TxtIDs *torch.Tensor
	// Weight is the HPO weight of each pair (P,).
	Weight *torch.Tensor
	// LossScale, when neither 0 nor 1, multiplies the batch's loss before
	// the backward pass (and in MicroStats.Loss): a data-parallel rank's
	// share of a global batch carries world·Σ(its weights)/Σ(the global
	// batch's weights) (Loader.SetShard), so that the ranks' averaged
	// gradients are those of the global batch's weighted mean loss.
	LossScale float64
}

// Pairs is the number of pairs in the batch.
func (b *Batch) Pairs() int64 {
	if b == nil || b.X0W == nil || b.X0W.Closed() || b.X0W.Dim() < 1 {
		return 0
	}
	return b.X0W.Size(0)
}

// Close frees every tensor of the batch.
func (b *Batch) Close() {
	if b == nil {
		return
	}
	for _, t := range []*torch.Tensor{b.X0W, b.X0L, b.Noise, b.Timesteps, b.Control, b.Text, b.Pooled, b.ImgIDs, b.TxtIDs, b.Weight} {
		t.Close()
	}
}

func (b *Batch) check(kind string) error {
	p := b.Pairs()
	if p == 0 {
		return errors.New("preference: train: batch has no winner latents")
	}
	rows := func(name string, t *torch.Tensor) error {
		if t == nil || t.Closed() {
			return fmt.Errorf("preference: train: batch %s is missing", name)
		}
		if t.Dim() < 1 || t.Size(0) != p {
			return fmt.Errorf("preference: train: batch %s has shape %v, want %d pairs first", name, t.Shape(), p)
		}
		return nil
	}
	for _, c := range []struct {
		n string
		t *torch.Tensor
	}{{"x0_l", b.X0L}, {"noise", b.Noise}, {"timesteps", b.Timesteps}, {"control", b.Control}, {"text", b.Text}, {"weight", b.Weight}} {
		if err := rows(c.n, c.t); err != nil {
			return err
		}
	}
	if fmt.Sprint(b.X0L.Shape()) != fmt.Sprint(b.X0W.Shape()) || fmt.Sprint(b.Noise.Shape()) != fmt.Sprint(b.X0W.Shape()) {
		return fmt.Errorf("preference: train: winner latents %v, loser latents %v and noise %v must have one shape",
			b.X0W.Shape(), b.X0L.Shape(), b.Noise.Shape())
	}
	if b.Timesteps.Dim() != 1 || b.Weight.Dim() != 1 {
		return fmt.Errorf("preference: train: timesteps %v and weight %v must be (P,)", b.Timesteps.Shape(), b.Weight.Shape())
	}
	if kind == KindFlux {
		if err := rows("pooled", b.Pooled); err != nil {
			return err
		}
		if int64(len(b.Sigmas)) != p {
			return fmt.Errorf("preference: train: %d sigmas for %d pairs", len(b.Sigmas), p)
		}
		if b.ImgIDs == nil || b.TxtIDs == nil || b.ImgIDs.Closed() || b.TxtIDs.Closed() {
			return errors.New("preference: train: a FLUX batch needs img_ids and txt_ids")
		}
	}
	return nil
}

// doubled repeats a per-pair tensor for the [winners; losers] batch.
func doubled(t *torch.Tensor) *torch.Tensor {
	if t == nil {
		return nil
	}
	return torch.Cat([]*torch.Tensor{t, t}, 0)
}

// Backbone kinds.
const (
	KindSD2  = "sd2"
	KindFlux = "flux"
)

// Backbone is the model side of DPO training: the frozen base model, the
// trainable ControlNet (the policy, float32 master weights) and its frozen
// copy (the reference π_ref). SD2Backbone and FluxBackbone implement it.
type Backbone interface {
	// Kind is KindSD2 or KindFlux.
	Kind() string
	// PolicyParams are the trainable ControlNet's weights in state-dict
	// order (what the optimizer updates and checkpoints save).
	PolicyParams() []optim.Param
	// ReferenceParams and BaseParams are the frozen weights.
	ReferenceParams() []optim.Param
	BaseParams() []optim.Param
	// Close frees what the backbone owns (the reference copy).
	Close()

	// noise makes x_t and the regression target of the doubled batch
	// [winners; losers].
	noise(b *Batch) (xt, target *torch.Tensor, err error)
	// predict runs the base model with the policy's (ref false) or the
	// reference's residuals on the doubled batch.
	predict(ref bool, xt *torch.Tensor, b *Batch) (*torch.Tensor, error)
	// setGradientCheckpointing turns the models' gradient checkpointing on
	// or off.
	setGradientCheckpointing(on bool)
	// setReferenceDType stores the frozen reference in dtype.
	setReferenceDType(dtype torch.DType) error
}

// TrainConfig holds the hyper-parameters of DPO training.
type TrainConfig struct {
	// Beta is the DPO β (DefaultBeta).
	Beta float64
	// AdamW is the optimizer's configuration (lr 2e-5 by default, see
	// DefaultTrainConfig).
	AdamW optim.AdamWConfig
	// MaxGradNorm is clip_grad_norm_'s max_norm (norm type 2); 0 or less
	// turns clipping off (the norm is still measured).
	MaxGradNorm float64
	// GradAccum is the number of batches whose gradients are summed
	// (each loss divided by GradAccum) before one optimizer step.
	GradAccum int
	// Schedule is the learning-rate schedule ("constant" or
	// "constant_with_warmup", ...).
	Schedule optim.ScheduleConfig
	// MixedPrecision is "no", "bf16" or "fp16": the forward passes run
	// under torch.autocast of that type on CUDA (never on the CPU), where
	// NewTrainer also stores the frozen reference in that type (as
	// Diffusion-DPO's ref_unet.to(dtype=weight_dtype)).
	MixedPrecision string
	// GradientCheckpointing turns on the gradient checkpointing of the
	// backbone's models (the base model's and the ControlNets' blocks are
	// recomputed in the backward pass instead of keeping their
	// activations: much less memory for about a third more compute; the
	// same gradients). NewTrainer sets it on the models.
	GradientCheckpointing bool
}

// DefaultTrainConfig is DP²O-SR's setting (SPEC §7.3: β 5000, lr 2e-5)
// with diffusers' ControlNet-recipe defaults (AdamW betas (0.9, 0.999),
// eps 1e-8, weight decay 1e-2, max_norm 1), a constant rate and no
// accumulation.
func DefaultTrainConfig() TrainConfig {
	a := optim.DefaultAdamW()
	a.LR = 2e-5
	return TrainConfig{Beta: DefaultBeta, AdamW: a, MaxGradNorm: 1, GradAccum: 1,
		Schedule: optim.ScheduleConfig{Name: "constant"}, MixedPrecision: "no"}
}

func (c TrainConfig) validate() error {
	if math.IsNaN(c.Beta) || math.IsInf(c.Beta, 0) || c.Beta <= 0 {
		return fmt.Errorf("preference: train: beta %v must be positive", c.Beta)
	}
	if c.GradAccum < 1 {
		return fmt.Errorf("preference: train: gradient accumulation %d must be at least 1", c.GradAccum)
	}
	if math.IsNaN(c.MaxGradNorm) {
		return errors.New("preference: train: max grad norm is NaN")
	}
	switch c.MixedPrecision {
	case "", "no", "bf16", "fp16":
	default:
		return fmt.Errorf("preference: train: mixed precision %q (want no, bf16 or fp16)", c.MixedPrecision)
	}
	return nil
}

// MicroStats is what one forward/backward pass over a batch measured.
type MicroStats struct {
	Loss, Accuracy                       float64
	ModelMargin, RefMargin, RewardMargin float64
	// Inside and PerPair are per pair; MSEModel and MSERef per row of the
	// doubled batch (winners first).
	Inside, PerPair, MSEModel, MSERef []float64
}

// StepStats is what one optimizer step measured: the means over its
// accumulated batches, the gradient norm before clipping, the clipping
// factor and the learning rate the step used.
type StepStats struct {
	// Step is the 0-based index of the optimizer step.
	Step                                 int
	Loss, Accuracy                       float64
	ModelMargin, RefMargin, RewardMargin float64
	GradNorm, ClipCoef, LR               float64
	// Micro holds each accumulated batch's own numbers.
	Micro []MicroStats
}

// Trainer runs HPO-weighted Diffusion-DPO on a Backbone: per batch the
// noised doubled batch, the policy's and the reference's predictions, the
// weighted DPO loss (DPOLoss) and its backward; per optimizer step
// gradient clipping, AdamW and the learning-rate schedule.
type Trainer struct {
	Backbone Backbone
	Config   TrainConfig
	// Opt is AdamW over the policy's weights, or what SetOptimizer put
	// there (a dist.ShardedOptimizer).
	Opt   optim.Optimizer
	Sched *optim.Scheduler
	// StepsDone is the number of optimizer steps taken.
	StepsDone int
	// Tap, when set, receives each batch's intermediates: xt, target,
	// model_pred, ref_pred (doubled batch), mse_model, mse_ref (2P),
	// model_diff, ref_diff, inside, per_pair_loss (P) and loss (0-d). The
	// tensor is valid only during the call.
	Tap func(name string, t *torch.Tensor)
	// BeforeClip, when set, sees the parameters with their accumulated
	// gradients right before clipping.
	BeforeClip func(params []optim.Param)
	// ReduceGradients, when set, runs in Update after Sync and before
	// BeforeClip and clipping, with the gradients of the step. An error
	// aborts the step before the optimizer changes anything. (A batch
	// that fails on one rank does not reach it: for data-parallel
	// averaging use Sync, which every rank closes.)
	ReduceGradients func(params []optim.Param) error
	// Sync, when set, averages the gradients over data-parallel ranks:
	// while the backward pass runs, as DistributedDataParallel does
	// (dist.Reducer), or after it (dist.Averager). Step arms it before
	// each batch's backward (sync only for the step's last batch), aborts
	// it when a batch fails, and Update waits for it before anything else.
	// Take steps with Step when Sync is set.
	Sync GradientSync

	// CheckpointFiles are extra files written into every checkpoint
	// folder (name → content), e.g. the ControlNet's config.json.
	CheckpointFiles map[string][]byte

	refFP *Fingerprint // the reference's fingerprint, computed once
	armed bool         // Sync was armed for the current step's last backward
}

// GradientSync averages gradients across ranks, during the backward pass
// (*dist.Reducer) or after it (*dist.Averager).
type GradientSync interface {
	// Prepare comes before each backward pass: sync is true for the last
	// batch of an optimizer step, whose backward reduces; the others only
	// accumulate.
	Prepare(sync bool) error
	// Finish, after that last backward, leaves the mean over the ranks in
	// each parameter's gradient.
	Finish() error
	// Abort replaces Finish when a batch of the step fails (that error is
	// returned, Abort's dropped): it closes the step with the other ranks,
	// whose Finish then fails too, instead of leaving them in its
	// collectives or averaging a partial gradient.
	Abort() error
}

// GradientClipper is a GradientSync that also clips: a sync that leaves
// each rank only its share of the gradients (*dist.Reducer with
// ShardGradients) takes the norm over all ranks. Update clips through it
// when the Sync is one.
type GradientClipper interface {
	ClipGradNorm(params []optim.Param, maxNorm, normType float64) (float64, error)
}

// NewTrainer sets up the optimizer and the schedule over the backbone's
// policy parameters (which it marks as requiring gradients).
func NewTrainer(bb Backbone, cfg TrainConfig) (*Trainer, error) {
	if bb == nil {
		return nil, errors.New("preference: train: nil backbone")
	}
	if cfg.MixedPrecision == "" {
		cfg.MixedPrecision = "no"
	}
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	bb.setGradientCheckpointing(cfg.GradientCheckpointing)
	params := bb.PolicyParams()
	if len(params) == 0 {
		return nil, errors.New("preference: train: the policy has no parameters")
	}
	for _, p := range params {
		if p.Tensor.DType() != torch.Float32 {
			return nil, fmt.Errorf("preference: train: policy weight %s is %v; the trained ControlNet keeps float32 master weights", p.Name, p.Tensor.DType())
		}
		p.Tensor.SetRequiresGrad(true)
	}
	var refFP *Fingerprint
	if dt, on := cfg.autocastDType(); on && params[0].Tensor.Device().IsCUDA() {
		// Under mixed precision the frozen reference is held in the
		// autocast dtype, as Diffusion-DPO's training holds its ref_unet
		// (ref_unet.to(dtype=weight_dtype)): its matmuls and convolutions
		// run in that dtype anyway, and it takes half the memory (2.9 GB
		// less for C-FLUX's ControlNet). Checkpoints identify the
		// reference by its weights before the cast, so that a run resumes
		// whatever its precision.
		fp, err := FingerprintOf(bb.ReferenceParams())
		if err != nil {
			return nil, fmt.Errorf("preference: train: %w", err)
		}
		refFP = &fp
		if err := bb.setReferenceDType(dt); err != nil {
			return nil, fmt.Errorf("preference: train: the reference in %v: %w", dt, err)
		}
	}
	opt, err := optim.NewAdamW(params, cfg.AdamW)
	if err != nil {
		return nil, fmt.Errorf("preference: train: %w", err)
	}
	sched, err := optim.NewScheduler(opt, cfg.Schedule)
	if err != nil {
		opt.Close()
		return nil, fmt.Errorf("preference: train: %w", err)
	}
	return &Trainer{Backbone: bb, Config: cfg, Opt: opt, Sched: sched, refFP: refFP}, nil
}

// SetOptimizer replaces the optimizer, before the first step or a
// LoadCheckpoint: build makes the new one over the policy's weights with
// the trainer's AdamW hyper-parameters (data-parallel training shards it
// over the ranks, dist.Group.NewShardedOptimizer). The old one is closed
// and the schedule carries on at StepsDone.
func (t *Trainer) SetOptimizer(build func(params []optim.Param, cfg optim.AdamWConfig) (optim.Optimizer, error)) error {
	if t == nil || t.Opt == nil {
		return errors.New("preference: train: trainer not set up (use NewTrainer)")
	}
	opt, err := build(t.Opt.Params(), t.Config.AdamW)
	if err != nil {
		return fmt.Errorf("preference: train: optimizer: %w", err)
	}
	got, want := opt.Params(), t.Opt.Params()
	same := len(got) == len(want)
	for i := 0; same && i < len(want); i++ {
		same = got[i].Name == want[i].Name && got[i].Tensor == want[i].Tensor
	}
	if !same {
		opt.Close()
		return errors.New("preference: train: the new optimizer must update the policy's weights, in their order")
	}
	sched, err := optim.NewScheduler(opt, t.Config.Schedule)
	if err != nil {
		opt.Close()
		return fmt.Errorf("preference: train: %w", err)
	}
	sched.SetLastStep(t.StepsDone)
	t.Opt.Close()
	t.Opt, t.Sched = opt, sched
	return nil
}

// Close frees the optimizer state (not the backbone).
func (t *Trainer) Close() {
	if t != nil && t.Opt != nil {
		t.Opt.Close()
	}
}

func (t *Trainer) tap(name string, x *torch.Tensor) {
	if t.Tap != nil {
		t.Tap(name, x)
	}
}

// region runs f under autocast when mixed precision is on and the policy
// lives on CUDA.
func (t *Trainer) region(f func()) {
	ps := t.Backbone.PolicyParams()
	dev := ps[0].Tensor.Device()
	if dt, on := t.Config.autocastDType(); on && dev.IsCUDA() {
		torch.Autocast(torch.DeviceCUDA, dt, f)
		return
	}
	f()
}

// autocastDType is the dtype of MixedPrecision's autocast, and whether it
// is on.
func (c TrainConfig) autocastDType() (torch.DType, bool) {
	switch c.MixedPrecision {
	case "bf16":
		return torch.BFloat16, true
	case "fp16":
		return torch.Float16, true
	}
	return torch.Float32, false
}

// Accumulate runs one batch forward (policy with autograd, reference
// without) and backward, adding loss/GradAccum's gradients to the policy's.
func (t *Trainer) Accumulate(b *Batch) (*MicroStats, error) { return t.run(b, true) }

// Evaluate computes the DPO loss and the implicit accuracy of a batch
// without gradients (validation); the policy is not changed.
func (t *Trainer) Evaluate(b *Batch) (ms *MicroStats, err error) {
	torch.NoGrad(func() { ms, err = t.run(b, false) })
	return ms, err
}

func (t *Trainer) run(b *Batch, backward bool) (ms *MicroStats, err error) {
	// One OS thread for the forward and the backward: autograd orders the
	// nodes it runs (and so the order in which it sums the gradients of a
	// tensor used several times) by sequence numbers that libtorch counts
	// per thread. A goroutine hopping threads between ops mixes counters
	// and makes the summation order, hence the last bits of the gradients,
	// change from run to run.
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	if t == nil || t.Backbone == nil || t.Opt == nil {
		return nil, errors.New("preference: train: trainer not set up (use NewTrainer)")
	}
	if err := b.check(t.Backbone.Kind()); err != nil {
		return nil, err
	}
	defer torch.Recover(&err)
	s := torch.NewScope()
	defer s.Close()
	xt, target, err := t.Backbone.noise(b)
	if err != nil {
		return nil, err
	}
	t.tap("xt", xt)
	t.tap("target", target)
	// Policy and reference compute with the same kernels, the autograd
	// path's (at step 0 in one precision they are equal bit for bit:
	// inside = 0, loss = ln 2; a reference held in the autocast dtype
	// differs by its weights' rounding), so the CPU fast paths (on with the
	// reference BLAS only) are off for both.
	var model, ref *torch.Tensor
	torch.PlainKernels(func() {
		t.region(func() {
			if ref, err = t.reference(xt, b); err != nil {
				return
			}
			model, err = t.Backbone.predict(false, xt, b)
		})
	})
	if err != nil {
		return nil, err
	}
	t.tap("model_pred", model)
	t.tap("ref_pred", ref)
	res, err := DPOLossStacked(model, ref, target, b.Weight, t.Config.Beta)
	if err != nil {
		return nil, err
	}
	defer res.Close()
	if t.Tap != nil {
		torch.NoGrad(func() {
			t.tap("mse_model", torch.Cat([]*torch.Tensor{res.ModelMSEW, res.ModelMSEL}, 0))
			t.tap("mse_ref", torch.Cat([]*torch.Tensor{res.RefMSEW, res.RefMSEL}, 0))
			t.tap("model_diff", res.ModelMSEW.Sub(res.ModelMSEL))
			t.tap("ref_diff", res.RefMSEW.Sub(res.RefMSEL))
			t.tap("inside", res.Inside)
			t.tap("per_pair_loss", res.PerPair)
			t.tap("loss", res.Loss.Detach())
		})
	}
	scaled := b.LossScale != 0 && b.LossScale != 1
	if backward {
		loss := res.Loss
		if scaled {
			loss = loss.MulScalar(b.LossScale)
		}
		if t.Config.GradAccum > 1 {
			loss = loss.DivScalar(float64(t.Config.GradAccum))
		}
		loss.Backward(nil)
	}
	ms = &MicroStats{Loss: res.Loss.Item(), Accuracy: res.Accuracy, ModelMargin: res.ModelMargin,
		RefMargin: res.RefMargin, RewardMargin: res.RewardMargin,
		Inside: res.Inside.Float64s(), PerPair: res.PerPair.Float64s()}
	if scaled {
		ms.Loss *= b.LossScale
	}
	torch.NoGrad(func() {
		ms.MSEModel = torch.Cat([]*torch.Tensor{res.ModelMSEW, res.ModelMSEL}, 0).Float64s()
		ms.MSERef = torch.Cat([]*torch.Tensor{res.RefMSEW, res.RefMSEL}, 0).Float64s()
	})
	for _, v := range ms.Inside {
		if math.IsNaN(v) {
			return nil, errors.New("preference: train: the DPO margin is NaN (diverged or bad input)")
		}
	}
	return ms, nil
}

// reference is the frozen reference's prediction, under no_grad.
func (t *Trainer) reference(xt *torch.Tensor, b *Batch) (out *torch.Tensor, err error) {
	torch.NoGrad(func() { out, err = t.Backbone.predict(true, xt, b) })
	return out, err
}

// Update clips the accumulated gradients, applies AdamW, clears the
// gradients and advances the schedule. It returns the gradient norm before
// clipping, the clipping factor and the learning rate used.
func (t *Trainer) Update() (gradNorm, clipCoef, lr float64, err error) {
	params := t.Opt.Params()
	if t.Sync != nil {
		if !t.armed {
			t.Opt.ZeroGrad()
			return 0, 0, 0, errors.New("preference: train: with Sync set, take optimizer steps with Step (the reduction is armed there)")
		}
		t.armed = false
		if err := t.Sync.Finish(); err != nil {
			t.Opt.ZeroGrad()
			return 0, 0, 0, fmt.Errorf("preference: train: synchronising gradients: %w", err)
		}
	}
	if t.ReduceGradients != nil {
		if err := t.ReduceGradients(params); err != nil {
			t.Opt.ZeroGrad()
			return 0, 0, 0, fmt.Errorf("preference: train: reducing gradients: %w", err)
		}
	}
	if t.BeforeClip != nil {
		t.BeforeClip(params)
	}
	maxNorm := t.Config.MaxGradNorm
	if maxNorm <= 0 {
		maxNorm = math.Inf(1)
	}
	clip := optim.ClipGradNorm
	if c, ok := t.Sync.(GradientClipper); ok {
		clip = c.ClipGradNorm
	}
	if gradNorm, err = clip(params, maxNorm, 2); err != nil {
		t.Opt.ZeroGrad()
		return 0, 0, 0, fmt.Errorf("preference: train: clipping: %w", err)
	}
	if math.IsNaN(gradNorm) || math.IsInf(gradNorm, 0) {
		t.Opt.ZeroGrad()
		return gradNorm, 0, 0, fmt.Errorf("preference: train: gradient norm is %v", gradNorm)
	}
	// clip_grad_norm_'s factor, in float32 as torch computes it.
	clipCoef = optim.ClipCoef(gradNorm, maxNorm)
	lr = t.Opt.LR()
	if err = t.Opt.Step(); err != nil {
		return gradNorm, clipCoef, lr, fmt.Errorf("preference: train: %w", err)
	}
	t.Opt.ZeroGrad()
	t.Sched.Step()
	t.StepsDone++
	return gradNorm, clipCoef, lr, nil
}

// Step is one optimizer step over len(batches) == GradAccum batches.
func (t *Trainer) Step(batches []*Batch) (*StepStats, error) {
	if t == nil || t.Opt == nil {
		return nil, errors.New("preference: train: trainer not set up (use NewTrainer)")
	}
	if len(batches) != t.Config.GradAccum {
		return nil, fmt.Errorf("preference: train: %d batches for a step with gradient accumulation %d", len(batches), t.Config.GradAccum)
	}
	st := &StepStats{Step: t.StepsDone}
	for i, b := range batches {
		if t.Sync != nil {
			last := i == len(batches)-1
			if err := t.Sync.Prepare(last); err != nil {
				t.Opt.ZeroGrad()
				return nil, fmt.Errorf("preference: train: step %d, batch %d: arming the gradient sync: %w", t.StepsDone, i, err)
			}
			t.armed = last
		}
		ms, err := t.Accumulate(b)
		if err != nil {
			if t.Sync != nil {
				// Close the step with the other ranks, rather than leave
				// them in its collectives until the timeout: the gradient
				// sync fails on every rank.
				t.armed = false
				t.Sync.Abort()
			}
			t.Opt.ZeroGrad()
			return nil, fmt.Errorf("preference: train: step %d, batch %d: %w", t.StepsDone, i, err)
		}
		st.Micro = append(st.Micro, *ms)
		n := float64(len(batches))
		st.Loss += ms.Loss / n
		st.Accuracy += ms.Accuracy / n
		st.ModelMargin += ms.ModelMargin / n
		st.RefMargin += ms.RefMargin / n
		st.RewardMargin += ms.RewardMargin / n
	}
	var err error
	if st.GradNorm, st.ClipCoef, st.LR, err = t.Update(); err != nil {
		return nil, fmt.Errorf("preference: train: step %d: %w", st.Step, err)
	}
	return st, nil
}
