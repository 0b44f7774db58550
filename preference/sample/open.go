package sample

import (
	"fmt"

	"github.com/dp2osr/dp2o/diffusion"
	"github.com/dp2osr/dp2o/diffusion/colorfix"
	"github.com/dp2osr/dp2o/flow"
	"github.com/dp2osr/dp2o/torch"
)

// LoadOptions say where and how Open loads a model.
type LoadOptions struct {
	Device torch.Device
	// DType of the networks (the VAE stays float32); zero: float16 on
	// CUDA, float32 on the CPU.
	DType      torch.DType
	NoAutocast bool // no float16 autocast region on CUDA
	// NumDoubleLayers and NumSingleLayers shape a FLUX ControlNet that has
	// no config.json beside it (zero: the official 4 and 0).
	NumDoubleLayers, NumSingleLayers int
}

// Model is a loaded Sampler that frees its model on Close.
type Model interface {
	Sampler
	Close()
}

type sd2Model struct{ SD2 }

func (m *sd2Model) Close() { m.P.Close() }

type fluxModel struct{ FLUX }

func (m *fluxModel) Close() { m.P.Close() }

// Open loads the model st names (st.Model, st.Base, st.ControlNet) and
// returns a sampler with st's pipeline settings.
func Open(st Settings, o LoadOptions) (Model, error) {
	align, err := colorfix.ParseMethod(st.AlignMethod)
	if err != nil {
		return nil, fmt.Errorf("sample: %w", err)
	}
	switch st.Model {
	case "flux":
		lo := flow.DefaultLoadOptions()
		lo.Device, lo.DType, lo.NoAutocast = o.Device, o.DType, o.NoAutocast
		if o.NumDoubleLayers > 0 {
			lo.NumDoubleLayers, lo.NumSingleLayers = o.NumDoubleLayers, o.NumSingleLayers
		}
		p, err := flow.LoadCFLUX(st.Base, st.ControlNet, lo)
		if err != nil {
			return nil, err
		}
		uo := flow.DefaultUpscaleOptions()
		uo.Steps, uo.GuidanceScale, uo.ConditioningScale = st.Steps, st.GuidanceScale, st.ConditioningScale
		uo.ProcessSize, uo.Upscale, uo.AlignMethod, uo.PadTo16 = st.ProcessSize, st.Upscale, align, st.PadTo16
		return &fluxModel{FLUX{P: p, Opts: uo}}, nil
	case "sd2":
		p, err := diffusion.LoadSD2(st.Base, st.ControlNet, diffusion.LoadOptions{Device: o.Device, DType: o.DType, NoAutocast: o.NoAutocast})
		if err != nil {
			return nil, err
		}
		uo := diffusion.DefaultUpscaleOptions()
		uo.Steps, uo.GuidanceScale, uo.ConditioningScale = st.Steps, st.GuidanceScale, st.ConditioningScale
		uo.NegativePrompt, uo.ProcessSize, uo.Upscale, uo.AlignMethod = st.NegativePrompt, st.ProcessSize, st.Upscale, align
		return &sd2Model{SD2{P: p, Opts: uo}}, nil
	}
	return nil, fmt.Errorf("sample: model %q: want sd2 or flux", st.Model)
}
