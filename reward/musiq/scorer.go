package musiq

import (
	"context"
	"fmt"

	"github.com/dp2osr/dp2o/reward"
	"github.com/dp2osr/dp2o/torch"
	"github.com/dp2osr/dp2o/torch/nn"
)

// WeightsFile is the published checkpoint (pyiqa's weights repository).
const WeightsFile = "musiq_koniq_ckpt-e95806b9.pth"

func init() {
	reward.Register("musiq", func(o reward.OpenOptions) (reward.Scorer, error) { return Open(o) })
}

// Scorer is the musiq metric (reward.Scorer).
type Scorer struct {
	model  *Model
	params *nn.Params
	dev    torch.Device
}

var _ reward.Scorer = (*Scorer)(nil)

// Open opens musiq (KonIQ). The weights come from o.Source (pyiqa's
// state-dict keys) or o.Weights: the published checkpoint (a bare state
// dict, a leading "module." stripped) or a directory holding it under
// WeightsFile.
func Open(o reward.OpenOptions) (*Scorer, error) {
	const name = "musiq"
	src, release, err := o.StateDict(name, WeightsFile, "")
	if err != nil {
		return nil, err
	}
	defer release()
	b := nn.NewBuilder(src, o.ComputeDType(), o.Device)
	m, err := New(b, KonIQ)
	if err != nil {
		b.Params().Close()
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	p, err := b.Finish()
	if err != nil {
		m.Close() // the weights the model made (standardised, reordered, stacked) are its own
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	return &Scorer{model: m, params: p, dev: o.Device}, nil
}

// Name is pyiqa's metric name.
func (s *Scorer) Name() string { return "musiq" }

// FullReference is false: musiq is a no-reference metric.
func (s *Scorer) FullReference() bool { return false }

// HigherIsBetter is true.
func (s *Scorer) HigherIsBetter() bool { return true }

// Model is the network (for taps and direct use).
func (s *Scorer) Model() *Model { return s.model }

// Score scores img (N,3,H,W) RGB in [0,1]; ref is ignored.
func (s *Scorer) Score(ctx context.Context, img, ref *torch.Tensor) (out []float64, err error) {
	return s.ScoreTap(ctx, img, nil)
}

// ScoreTap is Score with a tap on the intermediates.
func (s *Scorer) ScoreTap(ctx context.Context, img *torch.Tensor, tap Tap) (out []float64, err error) {
	if s.model == nil {
		return nil, fmt.Errorf("musiq: scorer is closed")
	}
	if err := reward.CheckInputs(ctx, s, img, nil); err != nil {
		return nil, err
	}
	return reward.RunScores("musiq", func() *torch.Tensor { return s.model.Forward(img.ToDevice(s.dev), tap) })
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
