package unet

import (
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/dp2osr/dp2o/internal/testutil"
	"github.com/dp2osr/dp2o/torch"
	"github.com/dp2osr/dp2o/torch/nn"
)

func readKeys(t *testing.T, rel string) testutil.KeyManifest {
	t.Helper()
	return testutil.ReadKeys(t, testutil.Fixture(t, rel))
}

// checkKeys compares what a model built on the meta device asked for with
// a keys.json: every key, every shape, the state-dict order, the number of
// parameters.
func checkKeys(t *testing.T, b *nn.Builder, params []Param, want testutil.KeyManifest) {
	t.Helper()
	var names []string
	var n int64
	for _, p := range params {
		names = append(names, p.Name)
		n += p.Tensor.Numel()
	}
	testutil.AssertKeys(t, want, names, b.Requested())
	require.Equal(t, want.NumParams, n)
}

func TestFullSizeKeys(t *testing.T) {
	testutil.NoLeak(t)
	ucfg, err := LoadConfig(testutil.Fixture(t, "sd2/keys/unet/config.json"))
	require.NoError(t, err)
	b := nn.NewBuilder(nil, torch.Float32, torch.Meta)
	u, err := New(b, ucfg)
	require.NoError(t, err)
	defer b.Params().Close()
	require.Equal(t, 12, u.NumSkips())
	checkKeys(t, b, u.Parameters(), readKeys(t, "sd2/keys/unet/keys.json"))

	want := readKeys(t, "sd2/keys/controlnet/keys.json")
	t.Run("controlnet config", func(t *testing.T) {
		ccfg, err := LoadControlNetConfig(testutil.Fixture(t, "sd2/keys/controlnet/config.json"))
		require.NoError(t, err)
		b := nn.NewBuilder(nil, torch.Float32, torch.Meta)
		cn, err := NewControlNet(b, ccfg)
		require.NoError(t, err)
		defer b.Params().Close()
		checkKeys(t, b, cn.Parameters(), want)
	})
	t.Run("from_unet config", func(t *testing.T) {
		b := nn.NewBuilder(nil, torch.Float32, torch.Meta)
		cn, err := NewControlNet(b, ControlNetConfigFromUNet(ucfg, ControlNetOptions{}))
		require.NoError(t, err)
		defer b.Params().Close()
		checkKeys(t, b, cn.Parameters(), want)
	})
	t.Run("built-in SD2 config", func(t *testing.T) {
		b := nn.NewBuilder(nil, torch.Float32, torch.Meta)
		u, err := New(b, SD2BaseConfig())
		require.NoError(t, err)
		defer b.Params().Close()
		checkKeys(t, b, u.Parameters(), readKeys(t, "sd2/keys/unet/keys.json"))
	})
}

// TestOtherSDConfigs builds the SD1.5 and SD2.1 UNets on the meta device:
// SD1.5 has 8 heads of width C/8 everywhere, 768-wide text and 1×1-conv
// proj_in/proj_out.
func TestOtherSDConfigs(t *testing.T) {
	testutil.NoLeak(t)
	sd15 := `{"_class_name": "UNet2DConditionModel", "_diffusers_version": "0.6.0", "act_fn": "silu",
	  "attention_head_dim": 8, "block_out_channels": [320, 640, 1280, 1280], "center_input_sample": false,
	  "cross_attention_dim": 768, "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
	  "downsample_padding": 1, "flip_sin_to_cos": true, "freq_shift": 0, "in_channels": 4, "layers_per_block": 2,
	  "mid_block_scale_factor": 1, "norm_eps": 1e-05, "norm_num_groups": 32, "out_channels": 4, "sample_size": 64,
	  "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"]}`
	sd21 := `{"_class_name": "UNet2DConditionModel", "_diffusers_version": "0.10.0.dev0", "act_fn": "silu",
	  "attention_head_dim": [5, 10, 20, 20], "block_out_channels": [320, 640, 1280, 1280], "center_input_sample": false,
	  "cross_attention_dim": 1024, "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
	  "downsample_padding": 1, "dual_cross_attention": false, "flip_sin_to_cos": true, "freq_shift": 0, "in_channels": 4,
	  "layers_per_block": 2, "mid_block_scale_factor": 1, "norm_eps": 1e-05, "norm_num_groups": 32, "num_class_embeds": null,
	  "only_cross_attention": false, "out_channels": 4, "sample_size": 96,
	  "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
	  "upcast_attention": true, "use_linear_projection": true}`
	for _, tc := range []struct {
		name, cfg string
		params    int64
		keys      map[string][]int64
	}{
		{"sd1.5", sd15, 859520964, map[string][]int64{
			"down_blocks.0.attentions.0.proj_in.weight":                            {320, 320, 1, 1},
			"up_blocks.3.attentions.2.proj_out.weight":                             {320, 320, 1, 1},
			"mid_block.attentions.0.transformer_blocks.0.attn2.to_k.weight":        {1280, 768},
			"down_blocks.1.attentions.1.transformer_blocks.0.ff.net.0.proj.weight": {5120, 640},
		}},
		{"sd2.1", sd21, 865910724, map[string][]int64{
			"down_blocks.0.attentions.0.proj_in.weight":                     {320, 320},
			"mid_block.attentions.0.transformer_blocks.0.attn2.to_k.weight": {1280, 1024},
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg, err := ParseConfig([]byte(tc.cfg))
			require.NoError(t, err)
			b := nn.NewBuilder(nil, torch.Float32, torch.Meta)
			u, err := New(b, cfg)
			require.NoError(t, err)
			defer b.Params().Close()
			var n int64
			for _, p := range u.Parameters() {
				n += p.Tensor.Numel()
			}
			require.Equal(t, tc.params, n)
			got := b.Requested()
			for k, sh := range tc.keys {
				require.Equal(t, sh, got[k], k)
			}
		})
	}
}
