package unet

import (
	"encoding/json"
	"fmt"

	"github.com/dp2osr/dp2o/internal/jsonconfig"
)

// Config is diffusers' UNet2DConditionModel configuration, read from a model
// folder's config.json. Unknown fields are ignored; missing ones take
// diffusers' constructor defaults (DefaultConfig), which is how the older
// SD2 files (diffusers 0.8-era, fewer keys) load.
//
// Several fields may be an int or a per-down-block list in the file
// (IntList); PerBlock expands them. attention_head_dim keeps diffusers'
// naming bug: unless num_attention_heads is set, it is the number of heads of
// each block, and the head dim is the block's channels divided by it.
type Config struct {
	SampleSize        IntList  `json:"sample_size,omitempty"`
	InChannels        int      `json:"in_channels"`
	OutChannels       int      `json:"out_channels"`
	CenterInputSample bool     `json:"center_input_sample"`
	FlipSinToCos      bool     `json:"flip_sin_to_cos"`
	FreqShift         float64  `json:"freq_shift"`
	DownBlockTypes    []string `json:"down_block_types"`
	MidBlockType      *string  `json:"mid_block_type"`
	UpBlockTypes      []string `json:"up_block_types"`
	// OnlyCrossAttention makes every attn1 attend to the text too (bool or
	// per-block list).
	OnlyCrossAttention        BoolList `json:"only_cross_attention"`
	BlockOutChannels          []int    `json:"block_out_channels"`
	LayersPerBlock            IntList  `json:"layers_per_block"`
	DownsamplePadding         int      `json:"downsample_padding"`
	MidBlockScaleFactor       float64  `json:"mid_block_scale_factor"`
	Dropout                   float64  `json:"dropout"`
	ActFn                     string   `json:"act_fn"`
	NormNumGroups             int      `json:"norm_num_groups"`
	NormEps                   float64  `json:"norm_eps"`
	CrossAttentionDim         IntList  `json:"cross_attention_dim"`
	TransformerLayersPerBlock IntList  `json:"transformer_layers_per_block"`
	// ReverseTransformerLayersPerBlock overrides the up blocks' transformer
	// depths (nil: the reversed TransformerLayersPerBlock).
	ReverseTransformerLayersPerBlock IntList `json:"reverse_transformer_layers_per_block,omitempty"`
	AttentionHeadDim                 IntList `json:"attention_head_dim"`
	NumAttentionHeads                IntList `json:"num_attention_heads,omitempty"`
	UseLinearProjection              bool    `json:"use_linear_projection"`
	UpcastAttention                  bool    `json:"upcast_attention"`
	ResnetTimeScaleShift             string  `json:"resnet_time_scale_shift"`
	ResnetSkipTimeAct                bool    `json:"resnet_skip_time_act"`
	ResnetOutScaleFactor             float64 `json:"resnet_out_scale_factor"`
	TimeEmbeddingType                string  `json:"time_embedding_type"`
	TimeEmbeddingDim                 *int    `json:"time_embedding_dim,omitempty"`
	TimeEmbeddingActFn               *string `json:"time_embedding_act_fn,omitempty"`
	TimestepPostAct                  *string `json:"timestep_post_act,omitempty"`
	ConvInKernel                     int     `json:"conv_in_kernel"`
	ConvOutKernel                    int     `json:"conv_out_kernel"`
	AttentionType                    string  `json:"attention_type"`
	DualCrossAttention               bool    `json:"dual_cross_attention"`

	// Features of other UNets (SDXL, unCLIP, LCM, …) that this package does
	// not build; Validate rejects a config that sets them.
	ClassEmbedType        *string `json:"class_embed_type,omitempty"`
	NumClassEmbeds        *int    `json:"num_class_embeds,omitempty"`
	AdditionEmbedType     *string `json:"addition_embed_type,omitempty"`
	EncoderHidDim         *int    `json:"encoder_hid_dim,omitempty"`
	EncoderHidDimType     *string `json:"encoder_hid_dim_type,omitempty"`
	TimeCondProjDim       *int    `json:"time_cond_proj_dim,omitempty"`
	CrossAttentionNorm    *string `json:"cross_attention_norm,omitempty"`
	ClassEmbeddingsConcat bool    `json:"class_embeddings_concat"`
}

func strp(s string) *string { return &s }

// DefaultConfig is UNet2DConditionModel's constructor defaults in diffusers
// (the SD1.x layout).
func DefaultConfig() Config {
	return Config{
		InChannels:                4,
		OutChannels:               4,
		FlipSinToCos:              true,
		DownBlockTypes:            []string{"CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"},
		MidBlockType:              strp("UNetMidBlock2DCrossAttn"),
		UpBlockTypes:              []string{"UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"},
		OnlyCrossAttention:        BoolList{false},
		BlockOutChannels:          []int{320, 640, 1280, 1280},
		LayersPerBlock:            IntList{2},
		DownsamplePadding:         1,
		MidBlockScaleFactor:       1,
		ActFn:                     "silu",
		NormNumGroups:             32,
		NormEps:                   1e-5,
		CrossAttentionDim:         IntList{1280},
		TransformerLayersPerBlock: IntList{1},
		AttentionHeadDim:          IntList{8},
		ResnetTimeScaleShift:      "default",
		ResnetOutScaleFactor:      1,
		TimeEmbeddingType:         "positional",
		ConvInKernel:              3,
		ConvOutKernel:             3,
		AttentionType:             "default",
	}
}

// SD2BaseConfig is the configuration of Stable Diffusion 2 base's UNet
// (stabilityai/stable-diffusion-2-base/unet, defaults filled in).
func SD2BaseConfig() Config {
	c := DefaultConfig()
	c.AttentionHeadDim = IntList{5, 10, 20, 20}
	c.CrossAttentionDim = IntList{1024}
	c.UseLinearProjection = true
	c.SampleSize = IntList{64}
	return c
}

// ParseConfig decodes a config.json body over DefaultConfig and validates it.
func ParseConfig(data []byte) (Config, error) {
	c := DefaultConfig()
	if err := decodeOver(data, &c, &c); err != nil {
		return Config{}, fmt.Errorf("unet config: %w", err)
	}
	if err := c.Validate(); err != nil {
		return Config{}, err
	}
	return c, nil
}

// decodeOver unmarshals data into target, whose UNet fields c holds the
// defaults; a list in the file replaces the default list instead of merging
// into it, and a null list takes the default back.
func decodeOver(data []byte, target any, c *Config) error {
	d := *c
	c.DownBlockTypes, c.UpBlockTypes, c.BlockOutChannels = nil, nil, nil
	if err := json.Unmarshal(data, target); err != nil {
		return err
	}
	if c.DownBlockTypes == nil {
		c.DownBlockTypes = d.DownBlockTypes
	}
	if c.UpBlockTypes == nil {
		c.UpBlockTypes = d.UpBlockTypes
	}
	if c.BlockOutChannels == nil {
		c.BlockOutChannels = d.BlockOutChannels
	}
	// null means "unset" to diffusers, which then uses its default.
	var raw map[string]json.RawMessage
	if err := json.Unmarshal(data, &raw); err != nil {
		return err
	}
	for key, set := range map[string]func(){
		"layers_per_block":             func() { c.LayersPerBlock = d.LayersPerBlock },
		"cross_attention_dim":          func() { c.CrossAttentionDim = d.CrossAttentionDim },
		"transformer_layers_per_block": func() { c.TransformerLayersPerBlock = d.TransformerLayersPerBlock },
		"attention_head_dim":           func() { c.AttentionHeadDim = d.AttentionHeadDim },
		"only_cross_attention":         func() { c.OnlyCrossAttention = d.OnlyCrossAttention },
	} {
		if v, ok := raw[key]; ok && string(v) == "null" {
			set()
		}
	}
	return nil
}

// LoadConfig reads a UNet config.json file.
func LoadConfig(path string) (Config, error) {
	return jsonconfig.Load(path, "unet config", ParseConfig)
}

// Validate checks that the configuration describes a model this package
// can build.
func (c Config) Validate() error {
	if _, err := c.layout(); err != nil {
		return err
	}
	if len(c.UpBlockTypes) != len(c.DownBlockTypes) {
		return fmt.Errorf("unet config: %d up_block_types for %d down_block_types", len(c.UpBlockTypes), len(c.DownBlockTypes))
	}
	for _, t := range c.UpBlockTypes {
		if t != "UpBlock2D" && t != "CrossAttnUpBlock2D" {
			return fmt.Errorf("unet config: unsupported up block type %q", t)
		}
	}
	if c.OutChannels < 1 {
		return fmt.Errorf("unet config: out_channels %d", c.OutChannels)
	}
	if c.ConvOutKernel < 1 || c.ConvOutKernel%2 == 0 {
		return fmt.Errorf("unet config: conv_out_kernel %d (want an odd size)", c.ConvOutKernel)
	}
	if len(c.ReverseTransformerLayersPerBlock) != 0 && len(c.ReverseTransformerLayersPerBlock) != len(c.UpBlockTypes) {
		return fmt.Errorf("unet config: reverse_transformer_layers_per_block has %d entries for %d up blocks",
			len(c.ReverseTransformerLayersPerBlock), len(c.UpBlockTypes))
	}
	return nil
}
