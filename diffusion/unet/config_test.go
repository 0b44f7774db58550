package unet

import (
	"encoding/json"
	"os"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/dp2osr/dp2o/internal/testutil"
)

func TestLoadConfig(t *testing.T) {
	path := testutil.Fixture(t, "sd2/unet/config.json")
	c, err := LoadConfig(path)
	require.NoError(t, err)
	// The fields as the file spells them, decoded independently of LoadConfig
	// (a number and a one-entry list are the same IntList).
	var raw struct {
		BlockOutChannels    []int   `json:"block_out_channels"`
		AttentionHeadDim    IntList `json:"attention_head_dim"`
		CrossAttentionDim   IntList `json:"cross_attention_dim"`
		UseLinearProjection bool    `json:"use_linear_projection"`
		NormNumGroups       int     `json:"norm_num_groups"`
	}
	data, err := os.ReadFile(path)
	require.NoError(t, err)
	require.NoError(t, json.Unmarshal(data, &raw))
	require.NotEmpty(t, raw.BlockOutChannels)
	require.Equal(t, raw.BlockOutChannels, c.BlockOutChannels)
	require.Equal(t, raw.AttentionHeadDim, c.AttentionHeadDim)
	require.Equal(t, raw.CrossAttentionDim, c.CrossAttentionDim)
	require.Equal(t, raw.UseLinearProjection, c.UseLinearProjection)
	require.Equal(t, raw.NormNumGroups, c.NormNumGroups)

	full, err := LoadConfig(testutil.Fixture(t, "sd2/keys/unet/config.json"))
	require.NoError(t, err)
	sd2 := SD2BaseConfig()
	// The written config spells out what the defaults leave empty.
	sd2.MidBlockType, full.MidBlockType = nil, nil
	require.Equal(t, sd2, full)
}

// TestOldSD2Config reads a config as the diffusers 0.8-era SD2-base folder
// has it (no mid_block_type, transformer_layers_per_block, …): the missing
// keys take diffusers' defaults.
func TestOldSD2Config(t *testing.T) {
	old := `{"_class_name": "UNet2DConditionModel", "_diffusers_version": "0.8.0", "act_fn": "silu",
	  "attention_head_dim": [5, 10, 20, 20], "block_out_channels": [320, 640, 1280, 1280], "center_input_sample": false,
	  "cross_attention_dim": 1024, "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
	  "downsample_padding": 1, "dual_cross_attention": false, "flip_sin_to_cos": true, "freq_shift": 0, "in_channels": 4,
	  "layers_per_block": 2, "mid_block_scale_factor": 1, "norm_eps": 1e-05, "norm_num_groups": 32, "out_channels": 4,
	  "sample_size": 64, "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
	  "use_linear_projection": true}`
	c, err := ParseConfig([]byte(old))
	require.NoError(t, err)
	require.Equal(t, SD2BaseConfig(), c)
}

func TestConfigLists(t *testing.T) {
	var l IntList
	require.NoError(t, json.Unmarshal([]byte(`8`), &l))
	require.Equal(t, IntList{8}, l)
	v, err := l.PerBlock(4, "x")
	require.NoError(t, err)
	require.Equal(t, []int{8, 8, 8, 8}, v)
	require.NoError(t, json.Unmarshal([]byte(`[1, 2]`), &l))
	_, err = l.PerBlock(4, "x")
	require.ErrorContains(t, err, "2 entries for 4 down blocks")
	require.Error(t, json.Unmarshal([]byte(`"a"`), &l))
	b, err := json.Marshal(IntList{5})
	require.NoError(t, err)
	require.Equal(t, "5", string(b))

	var bl BoolList
	require.NoError(t, json.Unmarshal([]byte(`[true, false]`), &bl))
	bv, err := bl.PerBlock(2)
	require.NoError(t, err)
	require.Equal(t, []bool{true, false}, bv)

	// null takes the default back.
	c, err := ParseConfig([]byte(`{"attention_head_dim": null, "layers_per_block": null}`))
	require.NoError(t, err)
	require.Equal(t, IntList{8}, c.AttentionHeadDim)
	require.Equal(t, IntList{2}, c.LayersPerBlock)
}

func TestConfigRejects(t *testing.T) {
	for cfg, msg := range map[string]string{
		`{"addition_embed_type": "text_time"}`: "addition_embed_type text_time is not supported",
		`{"class_embed_type": "timestep"}`:     "class embeddings",
		`{"down_block_types": ["SimpleCrossAttnDownBlock2D"], "block_out_channels": [32], "up_block_types": ["UpBlock2D"]}`: "unsupported down block type",
		`{"block_out_channels": [320, 640]}`:                  "2 block_out_channels",
		`{"attention_head_dim": [3, 10, 20, 20]}`:             "not divisible into 3 heads",
		`{"norm_num_groups": 7}`:                              "groups",
		`{"act_fn": "mish"}`:                                  "act_fn",
		`{"mid_block_type": "UNetMidBlock2DSimpleCrossAttn"}`: "unsupported mid block type",
		`{"layers_per_block": [2, 2]}`:                        "layers_per_block has 2 entries",
		`{"resnet_time_scale_shift": "scale_shift"}`:          "scale_shift",
		`{"in_channels": "four"}`:                             "unet config",
	} {
		_, err := ParseConfig([]byte(cfg))
		require.ErrorContains(t, err, msg, cfg)
	}
}
