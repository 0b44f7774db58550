package preference

import (
	"testing"

	"github.com/dp2osr/dp2o/diffusion/unet"
	"github.com/dp2osr/dp2o/flow/transformer"
	"github.com/dp2osr/dp2o/internal/testutil"
	"github.com/dp2osr/dp2o/torch"
	"github.com/dp2osr/dp2o/torch/nn"
	"github.com/dp2osr/dp2o/torch/optim"
)

// assertPolicyKeys checks that what a checkpoint's model.safetensors holds
// (the policy's names and shapes, SavePolicy) is the released layout's key
// set. A safetensors header lists keys sorted, so the order is not compared.
func assertPolicyKeys(t *testing.T, ps []optim.Param, rel string) {
	t.Helper()
	want := testutil.ReadKeys(t, testutil.Fixture(t, rel))
	want.Ordered = false
	var names []string
	shapes := map[string][]int64{}
	for _, p := range ps {
		names = append(names, p.Name)
		shapes[p.Name] = p.Tensor.Shape()
	}
	testutil.AssertKeys(t, want, names, shapes)
}

// TestCheckpointKeysFullSize builds the full-size SD2 and FLUX backbones on
// the meta device (nothing allocated) and checks that a checkpoint of their
// ControlNet has exactly the keys and shapes of DP²O-SR's released
// ControlNets (fixtures sd2/keys/controlnet, flux/keys/flux_controlnet_cflux).
func TestCheckpointKeysFullSize(t *testing.T) {
	_, ddpm := tinySD2(t) // the schedule only; shared by the package
	testutil.NoLeak(t)
	t.Run("sd2", func(t *testing.T) {
		ucfg, err := unet.LoadConfig(testutil.Fixture(t, "sd2/keys/unet/config.json"))
		if err != nil {
			t.Fatal(err)
		}
		b := nn.NewBuilder(nil, torch.Float32, torch.Meta)
		defer b.Params().Close()
		u, err := unet.New(b, ucfg)
		if err != nil {
			t.Fatal(err)
		}
		cn, err := unet.NewControlNet(b.Sub("controlnet"), unet.ControlNetConfigFromUNet(ucfg, unet.ControlNetOptions{}))
		if err != nil {
			t.Fatal(err)
		}
		bb, err := NewSD2Backbone(u, cn, ddpm)
		if err != nil {
			t.Fatal(err)
		}
		defer bb.Close()
		assertPolicyKeys(t, bb.PolicyParams(), "sd2/keys/controlnet/keys.json")
		assertPolicyKeys(t, bb.ReferenceParams(), "sd2/keys/controlnet/keys.json")
	})
	t.Run("flux", func(t *testing.T) {
		tcfg, err := transformer.LoadConfig(testutil.Fixture(t, "flux/keys/flux_transformer/config.json"))
		if err != nil {
			t.Fatal(err)
		}
		ccfg, err := transformer.LoadConfig(testutil.Fixture(t, "flux/keys/flux_controlnet_cflux/config.json"))
		if err != nil {
			t.Fatal(err)
		}
		b := nn.NewBuilder(nil, torch.BFloat16, torch.Meta)
		defer b.Params().Close()
		f, err := transformer.New(b, tcfg)
		if err != nil {
			t.Fatal(err)
		}
		cb := nn.NewBuilder(nil, torch.Float32, torch.Meta)
		defer cb.Params().Close()
		cn, err := transformer.NewControlNet(cb, transformer.ControlNetConfigFromTransformer(tcfg, ccfg.NumLayers, ccfg.NumSingleLayers))
		if err != nil {
			t.Fatal(err)
		}
		bb, err := NewFluxBackbone(f, cn)
		if err != nil {
			t.Fatal(err)
		}
		defer bb.Close()
		assertPolicyKeys(t, bb.PolicyParams(), "flux/keys/flux_controlnet_cflux/keys.json")
	})
}
