package preference

import (
	"errors"
	"fmt"

	"github.com/dp2osr/dp2o/flow/transformer"
	"github.com/dp2osr/dp2o/torch"
	"github.com/dp2osr/dp2o/torch/nn"
	"github.com/dp2osr/dp2o/torch/optim"
)

// DefaultTrainGuidance is the guidance value diffusers' FLUX ControlNet
// training recipe feeds both models (train_controlnet_flux.py's default).
const DefaultTrainGuidance = 3.5

// FluxBackbone is DPO training of a C-FLUX ControlNet: the frozen FLUX
// transformer, the trainable ControlNet, its frozen reference copy; flow
// matching (x_σ = (1−σ)·x0 + σ·ε, velocity target ε − x0) on packed
// latents. The transformer and the policy stay the caller's; the reference
// is the backbone's (Close frees it).
type FluxBackbone struct {
	Transformer *transformer.Flux
	Policy      *transformer.ControlNet
	Reference   *transformer.ControlNet
	// Guidance is the guidance value both models get (DefaultTrainGuidance).
	Guidance float64
	// ConditioningScale multiplies the ControlNet samples (1 in training).
	ConditioningScale float64
}

// NewFluxBackbone makes the reference as a deep copy of the policy's
// current weights and freezes the transformer and the reference.
func NewFluxBackbone(f *transformer.Flux, policy *transformer.ControlNet) (*FluxBackbone, error) {
	if f == nil || policy == nil {
		return nil, errors.New("preference: flux: transformer and ControlNet are required")
	}
	ps := policy.Parameters()
	if len(ps) == 0 {
		return nil, errors.New("preference: flux: the ControlNet has no weights")
	}
	ref, err := cloneFluxControlNet(policy, ps[0].Tensor.DType(), nil)
	if err != nil {
		return nil, err
	}
	for _, p := range f.Parameters() {
		p.Tensor.SetRequiresGrad(false)
	}
	return &FluxBackbone{Transformer: f, Policy: policy, Reference: ref, Guidance: DefaultTrainGuidance, ConditioningScale: 1}, nil
}

// cloneFluxControlNet deep-copies a ControlNet (same config, new storage)
// in dtype, frozen; copied (if not nil) runs once the weights are copied,
// before the copy is built.
func cloneFluxControlNet(cn *transformer.ControlNet, dtype torch.DType, copied func()) (*transformer.ControlNet, error) {
	ps := cn.Parameters()
	src := nn.MapSource{}
	defer src.Close()
	if err := copyWeights(src, fluxParams(ps), dtype); err != nil {
		return nil, fmt.Errorf("preference: flux: copying the reference: %w", err)
	}
	dev := ps[0].Tensor.Device()
	if copied != nil {
		copied()
	}
	ref, err := transformer.ControlNetFromSource(src, cn.Config, dtype, dev)
	if err != nil {
		return nil, fmt.Errorf("preference: flux: building the reference: %w", err)
	}
	for _, p := range ref.Parameters() {
		p.Tensor.SetRequiresGrad(false)
	}
	return ref, nil
}

// Kind is KindFlux.
func (s *FluxBackbone) Kind() string { return KindFlux }

func fluxParams(ps []transformer.Param) []optim.Param {
	out := make([]optim.Param, len(ps))
	for i, p := range ps {
		out[i] = optim.Param{Name: p.Name, Tensor: p.Tensor}
	}
	return out
}

// PolicyParams are the trainable ControlNet's weights.
func (s *FluxBackbone) PolicyParams() []optim.Param { return fluxParams(s.Policy.Parameters()) }

// ReferenceParams are the frozen reference's weights.
func (s *FluxBackbone) ReferenceParams() []optim.Param { return fluxParams(s.Reference.Parameters()) }

// BaseParams are the frozen transformer's weights.
func (s *FluxBackbone) BaseParams() []optim.Param { return fluxParams(s.Transformer.Parameters()) }

// setReferenceDType stores the reference in dtype.
func (s *FluxBackbone) setReferenceDType(dtype torch.DType) error {
	if s.Reference.Parameters()[0].Tensor.DType() == dtype {
		return nil
	}
	// The old reference goes once its weights are copied (in dtype), before
	// the new one is built: never two full copies besides the policy.
	old := s.Reference
	ref, err := cloneFluxControlNet(old, dtype, func() { old.Close() })
	s.Reference = ref // nil after an error: the backbone is unusable
	return err
}

// Close frees the reference copy.
func (s *FluxBackbone) Close() {
	if s != nil && s.Reference != nil {
		s.Reference.Close()
		s.Reference = nil
	}
}

// noise is the flow interpolation of [x0_w; x0_l] with the pair's noise
// and σ repeated, and the velocity target.
func (s *FluxBackbone) noise(b *Batch) (xt, target *torch.Tensor, err error) {
	sc := torch.NewScope()
	defer sc.Close()
	x0 := torch.Cat([]*torch.Tensor{b.X0W, b.X0L}, 0)
	sig := append(append([]float32(nil), b.Sigmas...), b.Sigmas...)
	xt, target, err = NoiseFlow(x0, doubled(b.Noise), sig)
	if err != nil {
		return nil, nil, err
	}
	sc.Keep(xt, target)
	return xt, target, nil
}

// predict is transformer(xt, …, controlnet_block_samples of the ControlNet).
func (s *FluxBackbone) predict(ref bool, xt *torch.Tensor, b *Batch) (out *torch.Tensor, err error) {
	cn := s.Policy
	if ref {
		cn = s.Reference
	}
	sc := torch.NewScope()
	defer sc.Close()
	ts := doubled(b.Timesteps)
	in := transformer.Input{
		HiddenStates:        xt,
		EncoderHiddenStates: doubled(b.Text),
		PooledProjections:   doubled(b.Pooled),
		Timestep:            ts,
		Guidance:            torch.Full([]int64{ts.Size(0)}, s.Guidance, torch.Float32, ts.Device()),
		ImgIDs:              b.ImgIDs,
		TxtIDs:              b.TxtIDs,
	}
	// Run the ControlNet unpruned, as diffusers does: with a tap set it
	// also computes the last block's text stream, whose output nothing
	// reads. Its joint attention then gives the text-query weights
	// (attn.add_q_proj, norm_added_q) an exact-zero gradient, so that
	// AdamW applies their weight decay as torch does, while the weights
	// after the attention (to_add_out, ff_context) get none and are
	// skipped.
	if cn.Tap == nil {
		cn.Tap = func(string, *torch.Tensor) {}
		defer func() { cn.Tap = nil }()
	}
	blocks, singles, err := cn.Forward(in, doubled(b.Control), s.ConditioningScale)
	if err != nil {
		return nil, fmt.Errorf("preference: flux: controlnet: %w", err)
	}
	in.ControlNetBlockSamples, in.ControlNetSingleBlockSamples = blocks, singles
	out, err = s.Transformer.Forward(in)
	if err != nil {
		return nil, fmt.Errorf("preference: flux: transformer: %w", err)
	}
	return sc.Keep(out), nil
}

func (s *FluxBackbone) setGradientCheckpointing(on bool) {
	s.Transformer.GradientCheckpointing, s.Policy.GradientCheckpointing, s.Reference.GradientCheckpointing = on, on, on
}
