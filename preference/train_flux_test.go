package preference

import (
	"sync"
	"testing"

	"github.com/dp2osr/dp2o/flow/transformer"
	"github.com/dp2osr/dp2o/internal/testutil"
	"github.com/dp2osr/dp2o/torch"
)

// The frozen tiny FLUX transformer, loaded once per package.
var fluxModels struct {
	once sync.Once
	f    *transformer.Flux
	err  error
}

func tinyFlux(t testing.TB) *transformer.Flux {
	t.Helper()
	fluxModels.once.Do(func() {
		fluxModels.f, fluxModels.err = transformer.LoadFlux(testutil.Fixture(t, "flux/transformer"), torch.Float32, testutil.Device(t))
	})
	if fluxModels.err != nil {
		t.Fatal(fluxModels.err)
	}
	return fluxModels.f
}

// tinyFluxControlNet is a fresh policy: the fixture's flat model.safetensors
// in FluxControlNetModel.from_transformer(transformer, num_layers of the
// ControlNet's config.json, num_single_layers 0).
func tinyFluxControlNet(t testing.TB, f *transformer.Flux) *transformer.ControlNet {
	t.Helper()
	ccfg, err := transformer.LoadConfig(testutil.Fixture(t, "flux/controlnet/config.json"))
	if err != nil {
		t.Fatal(err)
	}
	cfg := transformer.ControlNetConfigFromTransformer(f.Config, ccfg.NumLayers, ccfg.NumSingleLayers)
	cn, err := transformer.LoadControlNetFile(testutil.Fixture(t, "flux/controlnet/model.safetensors"), cfg, torch.Float32, testutil.Device(t))
	if err != nil {
		t.Fatal(err)
	}
	return cn
}

type fluxOwned struct{ *FluxBackbone }

func (s fluxOwned) Close() {
	p := s.Policy
	s.FluxBackbone.Close()
	p.Close()
}

// newTinyFluxBackbone builds the backbone with the fixture's guidance.
func newTinyFluxBackbone(t testing.TB) Backbone {
	t.Helper()
	f := tinyFlux(t)
	cn := tinyFluxControlNet(t, f)
	bb, err := NewFluxBackbone(f, cn)
	if err != nil {
		cn.Close()
		t.Fatal(err)
	}
	var meta trainMeta
	readJSON(t, "preference/train_flux/train.json", &meta)
	bb.Guidance = meta.Guidance
	return fluxOwned{bb}
}

// fluxFixtureBatch is step i's inputs of preference/train_flux.
func fluxFixtureBatch(t testing.TB, in map[string]*torch.Tensor, i int) *Batch {
	t.Helper()
	dev := testutil.Device(t)
	get := func(n string) *torch.Tensor {
		return torch.Unscope(stepTensor(t, in, i, n).ToDevice(dev))
	}
	ids := func(n string) *torch.Tensor {
		v, ok := in[n]
		if !ok {
			t.Fatalf("fixture tensor %s missing", n)
		}
		return torch.Unscope(v.ToDevice(dev))
	}
	return &Batch{X0W: get("x0_w"), X0L: get("x0_l"), Noise: get("noise"), Timesteps: get("timestep"),
		Sigmas: stepTensor(t, in, i, "sigma").Float32s(), Control: get("control"), Text: get("prompt_embeds"),
		Pooled: get("pooled_prompt_embeds"), ImgIDs: ids("img_ids"), TxtIDs: ids("txt_ids"), Weight: get("weight")}
}

var fluxRun = trainRun{dir: "preference/train_flux", shared: func(t testing.TB) { tinyFlux(t) },
	backbone: newTinyFluxBackbone, batch: fluxFixtureBatch}

func TestTrainFluxFixture(t *testing.T) { runTrainFixture(t, fluxRun) }

// TestTrainFluxFixtureCheckpointed trains the fixture with gradient
// checkpointing: the same numbers at the same tolerances.
func TestTrainFluxFixtureCheckpointed(t *testing.T) {
	r := fluxRun
	r.checkpoint = true
	runTrainFixture(t, r)
}

func TestTrainFluxOptimizerFixture(t *testing.T) { runOptimizerFixture(t, fluxRun) }
