package preference

import (
	"sync"
	"testing"

	"github.com/dp2osr/dp2o/diffusion/scheduler"
	"github.com/dp2osr/dp2o/diffusion/unet"
	"github.com/dp2osr/dp2o/internal/testutil"
	"github.com/dp2osr/dp2o/torch"
)

// The frozen tiny UNet and the DDPM schedule are loaded once per package
// (they are never modified; the fixture tests check that).
var sd2Models struct {
	once sync.Once
	u    *unet.UNet
	ddpm *scheduler.DDPM
	err  error
}

func tinySD2(t testing.TB) (*unet.UNet, *scheduler.DDPM) {
	t.Helper()
	dev := testutil.Device(t)
	sd2Models.once.Do(func() {
		if sd2Models.u, sd2Models.err = unet.Load(testutil.Fixture(t, "sd2/unet"), torch.Float32, dev); sd2Models.err != nil {
			return
		}
		var cfg scheduler.Config
		if cfg, sd2Models.err = scheduler.LoadConfig(testutil.Fixture(t, "sd2/scheduler/scheduler_config.json")); sd2Models.err != nil {
			return
		}
		sd2Models.ddpm, sd2Models.err = scheduler.NewDDPM(cfg)
	})
	if sd2Models.err != nil {
		t.Fatal(sd2Models.err)
	}
	return sd2Models.u, sd2Models.ddpm
}

// tinySD2ControlNet is a fresh policy: the fixture's flat model.safetensors
// loaded into ControlNetModel.from_unet(unet, conditioning widths of the
// diffusers config), as DP²O's scripts build it.
func tinySD2ControlNet(t testing.TB, u *unet.UNet) *unet.ControlNet {
	t.Helper()
	dcfg, err := unet.LoadControlNetConfig(testutil.Fixture(t, "sd2/controlnet/diffusers/config.json"))
	if err != nil {
		t.Fatal(err)
	}
	cfg := unet.ControlNetConfigFromUNet(u.Config, unet.ControlNetOptions{
		ConditioningEmbeddingOutChannels: dcfg.ConditioningEmbeddingOutChannels, ConditioningChannels: dcfg.ConditioningChannels})
	cn, err := unet.LoadControlNetFile(cfg, testutil.Fixture(t, "sd2/controlnet/model.safetensors"), torch.Float32, testutil.Device(t))
	if err != nil {
		t.Fatal(err)
	}
	return cn
}

// sd2Owned is an SD2Backbone that also frees its policy.
type sd2Owned struct{ *SD2Backbone }

func (s sd2Owned) Close() {
	p := s.Policy
	s.SD2Backbone.Close()
	p.Close()
}

func newTinySD2Backbone(t testing.TB) Backbone {
	t.Helper()
	u, ddpm := tinySD2(t)
	cn := tinySD2ControlNet(t, u)
	bb, err := NewSD2Backbone(u, cn, ddpm)
	if err != nil {
		cn.Close()
		t.Fatal(err)
	}
	return sd2Owned{bb}
}

// sd2FixtureBatch is step i's inputs of preference/train_sd2.
func sd2FixtureBatch(t testing.TB, in map[string]*torch.Tensor, i int) *Batch {
	t.Helper()
	dev := testutil.Device(t)
	get := func(n string) *torch.Tensor {
		return torch.Unscope(stepTensor(t, in, i, n).ToDevice(dev))
	}
	return &Batch{X0W: get("x0_w"), X0L: get("x0_l"), Noise: get("noise"), Timesteps: get("timesteps"),
		Control: get("control"), Text: get("encoder_hidden_states"), Weight: get("weight")}
}

var sd2Run = trainRun{dir: "preference/train_sd2", shared: func(t testing.TB) { tinySD2(t) }, backbone: newTinySD2Backbone, batch: sd2FixtureBatch}

func TestTrainSD2Fixture(t *testing.T) { runTrainFixture(t, sd2Run) }

// TestTrainSD2FixtureCheckpointed trains the fixture with gradient
// checkpointing: the same numbers at the same tolerances.
func TestTrainSD2FixtureCheckpointed(t *testing.T) {
	r := sd2Run
	r.checkpoint = true
	runTrainFixture(t, r)
}

func TestTrainSD2OptimizerFixture(t *testing.T) { runOptimizerFixture(t, sd2Run) }
