package lpips

import (
	"context"
	"errors"
	"fmt"

	"github.com/dp2osr/dp2o/reward"
	"github.com/dp2osr/dp2o/torch"
)

// Metrics are the pyiqa metric names this package registers.
var Metrics = map[string]struct {
	Net                 Net
	SemanticWeightLayer int
}{
	"lpips":      {Alex, -1},
	"lpips-vgg":  {VGG, -1},
	"lpips+":     {Alex, 2},
	"lpips-vgg+": {VGG, 2},
}

func init() {
	for name := range Metrics {
		reward.Register(name, func(o reward.OpenOptions) (reward.Scorer, error) { return Open(name, o) })
	}
}

// Scorer is an LPIPS metric as a reward.Scorer.
type Scorer struct {
	name  string
	Model *Model
}

// Open opens one of Metrics: from o.Source (pyiqa's state-dict layout) when
// set, else from o.Weights (see Load).
func Open(name string, o reward.OpenOptions) (*Scorer, error) {
	cfg, ok := Metrics[name]
	if !ok {
		return nil, fmt.Errorf("lpips: unknown metric %q", name)
	}
	if o.Device.Type == torch.DeviceCPU {
		o.Device = torch.CPU // the zero value
	}
	var m *Model
	var err error
	switch {
	case o.Source != nil:
		m, err = FromSource(o.Source, cfg.Net, o.ComputeDType(), o.Device)
	case o.Weights != "":
		m, err = Load(o.Weights, cfg.Net, o.ComputeDType(), o.Device)
	default:
		err = errors.New("lpips: no weights (set OpenOptions.Weights to the folder of the published checkpoints)")
	}
	if err != nil {
		return nil, err
	}
	m.SemanticWeightLayer = cfg.SemanticWeightLayer
	if o.Fast && o.Device == torch.CPU {
		if err := m.UseChannelsLast(); err != nil {
			m.Close()
			return nil, fmt.Errorf("lpips: %w", err)
		}
	}
	return &Scorer{name: name, Model: m}, nil
}

// Name is pyiqa's metric name.
func (s *Scorer) Name() string { return s.name }

// FullReference is true: LPIPS compares with a reference.
func (s *Scorer) FullReference() bool { return true }

// HigherIsBetter is false: LPIPS is a distance.
func (s *Scorer) HigherIsBetter() bool { return false }

// Score returns the LPIPS distance of each image of img (N,3,H,W) to the
// same-index image of ref, both float32 RGB in [0,1] on the model's
// device. One reference expanded to N (ref.Expand; batch stride 0), as when
// scoring the candidates of one group, is run through the backbone once.
func (s *Scorer) Score(ctx context.Context, img, ref *torch.Tensor) (scores []float64, err error) {
	if err := reward.CheckInputs(ctx, s, img, ref); err != nil {
		return nil, err
	}
	if s.Model == nil || s.Model.Params == nil {
		return nil, fmt.Errorf("%s: scorer is closed", s.name)
	}
	err = torch.Try(func() {
		torch.NoGrad(func() {
			sc := torch.NewScope()
			defer sc.Close()
			dt := s.Model.Lins[0].DType()
			out := s.Model.Forward(img.To(dt), ref.To(dt))
			scores = out.Reshape([]int64{-1}).To(torch.Float64).ToDevice(torch.CPU).Float64s()
		})
	})
	if err != nil {
		return nil, fmt.Errorf("%s: %w", s.name, err)
	}
	return scores, nil
}

// Close frees the weights.
func (s *Scorer) Close() error {
	s.Model.Close()
	return nil
}
