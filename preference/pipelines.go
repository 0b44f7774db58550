package preference

import (
	"errors"
	"fmt"

	"github.com/dp2osr/dp2o/diffusion"
	"github.com/dp2osr/dp2o/diffusion/scheduler"
	"github.com/dp2osr/dp2o/flow"
	flowsched "github.com/dp2osr/dp2o/flow/scheduler"
	"github.com/dp2osr/dp2o/torch"
)

// SD2Data is the data side of C-SD2 training from a loaded pipeline: its
// VAE, its CLIP text encoder (prompt padded to 77 tokens, last hidden
// state) and its DDPM training horizon.
func SD2Data(p *diffusion.SD2) (DataConfig, error) {
	if p == nil || p.VAE == nil || p.Tokenizer == nil || p.TextEncoder == nil {
		return DataConfig{}, errors.New("preference: sd2: the pipeline needs its VAE, tokenizer and text encoder")
	}
	enc := func(prompt string) (text, pooled *torch.Tensor, err error) {
		ids, _ := p.Tokenizer.EncodeBatch([]string{prompt})
		t := torch.FromSlice(ids[0], 1, int64(len(ids[0])))
		defer t.Close()
		out, err := p.TextEncoder.Encode(t)
		if err != nil {
			return nil, nil, fmt.Errorf("sd2 text encoder: %w", err)
		}
		defer out.Close()
		return out.LastHidden.Alias(), nil, nil
	}
	return DataConfig{Kind: KindSD2, VAE: p.VAE, EncodePrompt: enc,
		NumTrainTimesteps: p.Scheduler.NumTrainTimesteps, Device: p.Device}, nil
}

// NewSD2BackboneFrom builds the SD2 backbone over a loaded pipeline: its
// UNet (frozen), its ControlNet as the policy (it must be float32: the
// trained master weights) and the pipeline's DDPM schedule, which the
// backbone's caller closes (Close of the returned DDPM).
func NewSD2BackboneFrom(p *diffusion.SD2) (*SD2Backbone, *scheduler.DDPM, error) {
	if p == nil || p.UNet == nil || p.ControlNet == nil {
		return nil, nil, errors.New("preference: sd2: the pipeline needs its UNet and ControlNet")
	}
	ddpm, err := scheduler.NewDDPM(p.Scheduler)
	if err != nil {
		return nil, nil, fmt.Errorf("preference: sd2: %w", err)
	}
	bb, err := NewSD2Backbone(p.UNet, p.ControlNet, ddpm)
	if err != nil {
		ddpm.Close()
		return nil, nil, err
	}
	return bb, ddpm, nil
}

// FluxData is the data side of C-FLUX training from a loaded pipeline:
// its VAE (the winner, loser and control latents), encode_prompt (T5
// embedding and pooled CLIP embedding), its flow-matching schedule and the
// FLUX ControlNet recipe's logit-normal timestep density.
func FluxData(p *flow.CFLUX) (DataConfig, error) {
	if p == nil || p.VAE == nil {
		return DataConfig{}, errors.New("preference: flux: the pipeline needs its VAE")
	}
	enc := func(prompt string) (text, pooled *torch.Tensor, err error) {
		e, err := p.EncodePrompt([]string{prompt})
		if err != nil {
			return nil, nil, err
		}
		defer e.Close()
		return e.Prompt.Alias(), e.Pooled.Alias(), nil
	}
	return DataConfig{Kind: KindFlux, VAE: p.VAE, EncodePrompt: enc, Flow: p.Scheduler,
		Density: flowsched.DefaultDensity(), Device: p.Device}, nil
}

// NewFluxBackboneFrom builds the FLUX backbone over a loaded pipeline: its
// transformer (frozen) and its ControlNet as the policy (float32).
func NewFluxBackboneFrom(p *flow.CFLUX) (*FluxBackbone, error) {
	if p == nil || p.Transformer == nil || p.ControlNet == nil {
		return nil, errors.New("preference: flux: the pipeline needs its transformer and ControlNet")
	}
	return NewFluxBackbone(p.Transformer, p.ControlNet)
}
