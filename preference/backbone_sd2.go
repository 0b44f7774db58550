package preference

import (
	"errors"
	"fmt"

	"github.com/dp2osr/dp2o/diffusion/scheduler"
	"github.com/dp2osr/dp2o/diffusion/unet"
	"github.com/dp2osr/dp2o/torch"
	"github.com/dp2osr/dp2o/torch/nn"
	"github.com/dp2osr/dp2o/torch/optim"
)

// SD2Backbone is DPO training of a C-SD2 ControlNet: the frozen SD2 UNet,
// the trainable ControlNet, its frozen reference copy, the DDPM schedule
// (ε target). The UNet, the policy and the schedule stay the caller's;
// the reference is the backbone's (Close frees it).
type SD2Backbone struct {
	UNet      *unet.UNet
	Policy    *unet.ControlNet
	Reference *unet.ControlNet
	DDPM      *scheduler.DDPM
	// ConditioningScale multiplies the ControlNet residuals (1 in training).
	ConditioningScale float64
}

// NewSD2Backbone makes the reference as a deep copy of the policy's
// current weights, freezes the UNet and the reference, and leaves the
// policy to NewTrainer (which makes it trainable).
func NewSD2Backbone(u *unet.UNet, policy *unet.ControlNet, ddpm *scheduler.DDPM) (*SD2Backbone, error) {
	if u == nil || policy == nil || ddpm == nil {
		return nil, errors.New("preference: sd2: UNet, ControlNet and DDPM schedule are required")
	}
	ps := policy.Parameters()
	if len(ps) == 0 {
		return nil, errors.New("preference: sd2: the ControlNet has no weights")
	}
	ref, err := cloneControlNet(policy, ps[0].Tensor.DType(), nil)
	if err != nil {
		return nil, err
	}
	for _, p := range u.Parameters() {
		p.Tensor.SetRequiresGrad(false)
	}
	return &SD2Backbone{UNet: u, Policy: policy, Reference: ref, DDPM: ddpm, ConditioningScale: 1}, nil
}

// cloneControlNet deep-copies a ControlNet (same config, new storage) in
// dtype, frozen; copied (if not nil) runs once the weights are copied,
// before the copy is built.
func cloneControlNet(cn *unet.ControlNet, dtype torch.DType, copied func()) (ref *unet.ControlNet, err error) {
	ps := cn.Parameters()
	src := nn.MapSource{}
	defer src.Close()
	if err := copyWeights(src, sd2Params(ps), dtype); err != nil {
		return nil, fmt.Errorf("preference: sd2: copying the reference: %w", err)
	}
	dev := ps[0].Tensor.Device()
	if copied != nil {
		copied()
	}
	ref, err = unet.ControlNetFromSource(src, cn.Config, dtype, dev)
	if err != nil {
		return nil, fmt.Errorf("preference: sd2: building the reference: %w", err)
	}
	for _, p := range ref.Parameters() {
		p.Tensor.SetRequiresGrad(false)
	}
	return ref, nil
}

// Kind is KindSD2.
func (s *SD2Backbone) Kind() string { return KindSD2 }

func sd2Params(ps []unet.Param) []optim.Param {
	out := make([]optim.Param, len(ps))
	for i, p := range ps {
		out[i] = optim.Param{Name: p.Name, Tensor: p.Tensor}
	}
	return out
}

// PolicyParams are the trainable ControlNet's weights.
func (s *SD2Backbone) PolicyParams() []optim.Param { return sd2Params(s.Policy.Parameters()) }

// ReferenceParams are the frozen reference's weights.
func (s *SD2Backbone) ReferenceParams() []optim.Param { return sd2Params(s.Reference.Parameters()) }

// BaseParams are the frozen UNet's weights.
func (s *SD2Backbone) BaseParams() []optim.Param { return sd2Params(s.UNet.Parameters()) }

// setReferenceDType stores the reference in dtype.
func (s *SD2Backbone) setReferenceDType(dtype torch.DType) error {
	if s.Reference.Parameters()[0].Tensor.DType() == dtype {
		return nil
	}
	// The old reference goes once its weights are copied (in dtype), before
	// the new one is built: never two full copies besides the policy.
	old := s.Reference
	ref, err := cloneControlNet(old, dtype, func() { old.Close() })
	s.Reference = ref // nil after an error: the backbone is unusable
	return err
}

// Close frees the reference copy.
func (s *SD2Backbone) Close() {
	if s != nil && s.Reference != nil {
		s.Reference.Close()
		s.Reference = nil
	}
}

// noise is DDPMScheduler.add_noise on [x0_w; x0_l] with the pair's noise
// and timestep repeated; the target is ε.
func (s *SD2Backbone) noise(b *Batch) (xt, target *torch.Tensor, err error) {
	if b.Timesteps.DType() != torch.Int64 {
		return nil, nil, fmt.Errorf("preference: sd2: timesteps must be int64, got %v", b.Timesteps.DType())
	}
	sc := torch.NewScope()
	defer sc.Close()
	x0 := torch.Cat([]*torch.Tensor{b.X0W, b.X0L}, 0)
	eps := doubled(b.Noise)
	xt, target, err = NoiseEpsilon(s.DDPM, x0, eps, doubled(b.Timesteps))
	if err != nil {
		return nil, nil, err
	}
	sc.Keep(xt, target)
	return xt, target, nil
}

// predict is unet(xt, t, text, residuals of the ControlNet).
func (s *SD2Backbone) predict(ref bool, xt *torch.Tensor, b *Batch) (out *torch.Tensor, err error) {
	cn := s.Policy
	if ref {
		cn = s.Reference
	}
	sc := torch.NewScope()
	defer sc.Close()
	ts, text, ctrl := doubled(b.Timesteps), doubled(b.Text), doubled(b.Control)
	r, err := cn.TryForward(xt, ts, text, ctrl, s.ConditioningScale)
	if err != nil {
		return nil, fmt.Errorf("preference: sd2: controlnet: %w", err)
	}
	defer r.Close()
	out, err = s.UNet.TryForward(xt, ts, text, r)
	if err != nil {
		return nil, fmt.Errorf("preference: sd2: unet: %w", err)
	}
	return sc.Keep(out), nil
}

func (s *SD2Backbone) setGradientCheckpointing(on bool) {
	s.UNet.GradientCheckpointing, s.Policy.GradientCheckpointing, s.Reference.GradientCheckpointing = on, on, on
}
