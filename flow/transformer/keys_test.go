package transformer

import (
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/dp2osr/dp2o/internal/testutil"
	"github.com/dp2osr/dp2o/torch"
	"github.com/dp2osr/dp2o/torch/nn"
)

// checkKeys compares what a model built on the meta device asked for with
// a keys.json: every key, every shape, the number of parameters.
func checkKeys(t *testing.T, b *nn.Builder, params []Param, rel string) {
	t.Helper()
	want := testutil.ReadKeys(t, testutil.Fixture(t, rel))
	var names []string
	var n int64
	for _, p := range params {
		names = append(names, p.Name)
		n += p.Tensor.Numel()
	}
	testutil.AssertKeys(t, want, names, b.Requested())
	require.Equal(t, want.NumParams, n)
}

// TestFullSizeKeys builds the published FLUX.1-dev transformer and the
// C-FLUX ControlNet from their real configs on the meta device (no weights
// allocated) and checks them against the full-size key manifests.
func TestFullSizeKeys(t *testing.T) {
	testutil.NoLeak(t)
	tcfg, err := LoadConfig(testutil.Fixture(t, "flux/keys/flux_transformer/config.json"))
	require.NoError(t, err)
	b := nn.NewBuilder(nil, torch.BFloat16, torch.Meta)
	f, err := New(b, tcfg)
	require.NoError(t, err)
	defer b.Params().Close()
	checkKeys(t, b, f.Parameters(), "flux/keys/flux_transformer/keys.json")

	ccfg, err := LoadConfig(testutil.Fixture(t, "flux/keys/flux_controlnet_cflux/config.json"))
	require.NoError(t, err)
	t.Run("controlnet config", func(t *testing.T) {
		b := nn.NewBuilder(nil, torch.BFloat16, torch.Meta)
		cn, err := NewControlNet(b, ccfg)
		require.NoError(t, err)
		defer b.Params().Close()
		checkKeys(t, b, cn.Parameters(), "flux/keys/flux_controlnet_cflux/keys.json")
	})
	t.Run("from_transformer config", func(t *testing.T) {
		c := ControlNetConfigFromTransformer(tcfg, ccfg.NumLayers, ccfg.NumSingleLayers)
		require.Equal(t, ccfg, c)
		b := nn.NewBuilder(nil, torch.BFloat16, torch.Meta)
		cn, err := NewControlNet(b, c)
		require.NoError(t, err)
		defer b.Params().Close()
		checkKeys(t, b, cn.Parameters(), "flux/keys/flux_controlnet_cflux/keys.json")
	})
}

// TestConfigDefaults: the published FLUX.1-dev config predates
// axes_dims_rope and out_channels; diffusers' defaults apply.
func TestConfigDefaults(t *testing.T) {
	testutil.NoLeak(t)
	c, err := LoadConfig(testutil.Fixture(t, "flux/keys/flux_transformer/config.json"))
	require.NoError(t, err)
	require.Equal(t, DefaultConfig().AxesDimsRope, c.AxesDimsRope)
	require.Nil(t, c.OutChannels)
	require.Equal(t, int64(c.InChannels), c.OutDim())

	for _, bad := range []string{
		`{"attention_head_dim": 16, "axes_dims_rope": [4, 6, 4]}`,
		`{"axes_dims_rope": [15, 57, 56]}`,
		`{"num_attention_heads": 0}`,
		`{"num_layers": -1}`,
		`{"num_mode": 10}`,
		`{"conditioning_embedding_channels": 16}`,
		`{"num_layers": "x"}`,
	} {
		_, err := ParseConfig([]byte(bad))
		require.Error(t, err, bad)
	}
	// schnell: no guidance embedder, the rest as dev.
	b := nn.NewBuilder(nil, torch.BFloat16, torch.Meta)
	defer b.Params().Close()
	schnell := DefaultConfig()
	_, err = New(b, schnell)
	require.NoError(t, err)
	for k := range b.Requested() {
		require.NotContains(t, k, "guidance_embedder")
	}
	require.Contains(t, b.Requested(), "time_text_embed.timestep_embedder.linear_1.weight")
}
