package topiq

import (
	"context"
	"fmt"

	"github.com/dp2osr/dp2o/reward"
	"github.com/dp2osr/dp2o/torch"
	"github.com/dp2osr/dp2o/torch/nn"
)

// Published checkpoint file names (pyiqa's weights repository).
const (
	NRWeightsFile = "cfanet_nr_koniq_res50-9a73138b.pth"
	FRWeightsFile = "cfanet_fr_kadid_res50-2c4cc61d.pth"
)

func init() {
	reward.Register("topiq_nr", func(o reward.OpenOptions) (reward.Scorer, error) { return Open("topiq_nr", o) })
	reward.Register("topiq_fr", func(o reward.OpenOptions) (reward.Scorer, error) { return Open("topiq_fr", o) })
}

// Scorer is a TOPIQ metric (reward.Scorer).
type Scorer struct {
	name   string
	model  *Model
	params *nn.Params
	dev    torch.Device
}

var _ reward.Scorer = (*Scorer)(nil)

// Open opens "topiq_nr" or "topiq_fr". The weights come from o.Source (the
// pyiqa module's state-dict keys) or o.Weights: the published checkpoint
// (torch.save of {'params': state_dict}, a leading "module." stripped), or
// a directory holding it under its published name (NRWeightsFile,
// FRWeightsFile).
func Open(name string, o reward.OpenOptions) (*Scorer, error) {
	var cfg Config
	var file string
	switch name {
	case "topiq_nr":
		cfg, file = NRConfig, NRWeightsFile
	case "topiq_fr":
		cfg, file = FRConfig, FRWeightsFile
	default:
		return nil, fmt.Errorf("topiq: unknown metric %q", name)
	}
	src, release, err := o.StateDict(name, file, "params")
	if err != nil {
		return nil, err
	}
	defer release()
	b := nn.NewBuilder(src, o.ComputeDType(), o.Device)
	m, err := New(b, cfg)
	if err != nil {
		b.Params().Close()
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	p, err := b.Finish()
	if err != nil {
		m.Close() // the folded backbone convolutions are the model's own
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	return &Scorer{name: name, model: m, params: p, dev: o.Device}, nil
}

// Name is pyiqa's metric name.
func (s *Scorer) Name() string { return s.name }

// FullReference reports whether Score needs the reference image.
func (s *Scorer) FullReference() bool { return s.model.cfg.UseRef }

// HigherIsBetter is true for both TOPIQ metrics.
func (s *Scorer) HigherIsBetter() bool { return true }

// Model is the network (for taps and direct use).
func (s *Scorer) Model() *Model { return s.model }

// Score scores img (N,3,H,W) RGB in [0,1] (against ref of the same shape for
// topiq_fr; ref is ignored by topiq_nr).
func (s *Scorer) Score(ctx context.Context, img, ref *torch.Tensor) (out []float64, err error) {
	return s.ScoreTap(ctx, img, ref, nil)
}

// ScoreTap is Score with a tap on the intermediates.
func (s *Scorer) ScoreTap(ctx context.Context, img, ref *torch.Tensor, tap Tap) (out []float64, err error) {
	if s.model == nil {
		return nil, fmt.Errorf("%s: scorer is closed", s.name)
	}
	if err := reward.CheckInputs(ctx, s, img, ref); err != nil {
		return nil, err
	}
	if !s.model.cfg.UseRef {
		ref = nil
	}
	return reward.RunScores(s.name, func() *torch.Tensor {
		x := img.ToDevice(s.dev)
		var y *torch.Tensor
		if ref != nil {
			y = ref.ToDevice(s.dev)
		}
		return s.model.Forward(x, y, tap)
	})
}

// Close frees the weights.
func (s *Scorer) Close() error {
	if s.model != nil {
		s.model.Close()
		s.params.Close()
		s.model, s.params = nil, nil
	}
	return nil
}
