package afine

import (
	"context"
	"fmt"
	"os"
	"path/filepath"

	"github.com/dp2osr/dp2o/reward"
	"github.com/dp2osr/dp2o/torch"
	"github.com/dp2osr/dp2o/torch/nn"
	"github.com/dp2osr/dp2o/torch/pickle"
)

// WeightsFile is the published checkpoint (pyiqa's weights repository).
const WeightsFile = "afine.pth"

// Sections maps the published file's top-level keys to the prefixes of the
// network's state dict: each section is a state dict of one sub-module.
var Sections = [][2]string{
	{"finetuned_clip", "clip_model"},
	{"natural", "net_qhead"},
	{"fidelity", "net_dhead"},
	{"fidelity_scale", "net_scale_fr"},
	{"natural_scale", "net_scale_nr"},
	{"adapter", "adapter"},
}

func init() {
	reward.Register("afine_fr", func(o reward.OpenOptions) (reward.Scorer, error) { return Open("afine_fr", o) })
	reward.Register("afine_nr", func(o reward.OpenOptions) (reward.Scorer, error) { return Open("afine_nr", o) })
}

// Scorer is afine_fr or afine_nr (reward.Scorer).
type Scorer struct {
	name   string
	fr     bool
	model  *Model
	params *nn.Params
	dev    torch.Device
}

var _ reward.Scorer = (*Scorer)(nil)

// Open opens "afine_fr" or "afine_nr". The weights come from o.Source (the
// network's state-dict keys: clip_model.*, net_qhead.*, …) or o.Weights:
// the published afine.pth (six state dicts under the keys of Sections) or
// a directory holding it.
func Open(name string, o reward.OpenOptions) (*Scorer, error) {
	if name != "afine_fr" && name != "afine_nr" {
		return nil, fmt.Errorf("afine: unknown metric %q", name)
	}
	src := o.Source
	if src == nil {
		ms, err := loadPublished(o.Weights)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", name, err)
		}
		defer ms.Close()
		src = ms
	}
	b := nn.NewBuilder(src, o.ComputeDType(), o.Device)
	m, err := New(b)
	if err != nil {
		b.Params().Close()
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	p, err := b.Finish()
	if err != nil {
		m.Close()
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	return &Scorer{name: name, fr: name == "afine_fr", model: m, params: p, dev: o.Device}, nil
}

// loadPublished reads the six sections of afine.pth into one state dict.
func loadPublished(path string) (nn.MapSource, error) {
	if path == "" {
		return nil, fmt.Errorf("no weights: set OpenOptions.Weights to %s or its directory", WeightsFile)
	}
	if st, err := os.Stat(path); err == nil && st.IsDir() {
		path = filepath.Join(path, WeightsFile)
	}
	out := nn.MapSource{}
	for _, sec := range Sections {
		ms, err := nn.LoadPth(path, pickle.WithKey(sec[0]))
		if err != nil {
			out.Close()
			return nil, err
		}
		for k, t := range ms {
			out[sec[1]+"."+k] = t
		}
	}
	return out, nil
}

// Name is pyiqa's metric name.
func (s *Scorer) Name() string { return s.name }

// FullReference is true for afine_fr.
func (s *Scorer) FullReference() bool { return s.fr }

// HigherIsBetter is false: lower A-FINE values are better.
func (s *Scorer) HigherIsBetter() bool { return false }

// Model is the network.
func (s *Scorer) Model() *Model { return s.model }

// Score scores img (N,3,H,W) RGB in [0,1], H and W multiples of 32, against
// ref of the same shape for afine_fr (ignored by afine_nr). pyiqa takes
// one image at a time; a batch gives each image's own score.
func (s *Scorer) Score(ctx context.Context, img, ref *torch.Tensor) ([]float64, error) {
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
	if err := checkSize(img.Shape(), s.model.vit.Patch()); err != nil {
		return nil, fmt.Errorf("%s: %w", s.name, err)
	}
	return reward.RunScores(s.name, func() *torch.Tensor {
		var y *torch.Tensor
		if s.fr {
			y = s.model.ForwardFR(img.ToDevice(s.dev), ref.ToDevice(s.dev), tap)
		} else {
			y = s.model.ForwardNR(img.ToDevice(s.dev), tap)
		}
		return y
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
