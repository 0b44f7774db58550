package transformer

import (
	"encoding/json"
	"fmt"

	"github.com/dp2osr/dp2o/internal/jsonconfig"
)

// Config is the configuration of diffusers' FluxTransformer2DModel and
// FluxControlNetModel (they share their fields), read from a config.json.
// Unknown keys are ignored; missing ones take diffusers' constructor
// defaults (DefaultConfig).
type Config struct {
	PatchSize  int `json:"patch_size"`
	InChannels int `json:"in_channels"`
	// OutChannels is the transformer's output channels (nil: in_channels).
	OutChannels         *int `json:"out_channels"`
	NumLayers           int  `json:"num_layers"`
	NumSingleLayers     int  `json:"num_single_layers"`
	AttentionHeadDim    int  `json:"attention_head_dim"`
	NumAttentionHeads   int  `json:"num_attention_heads"`
	JointAttentionDim   int  `json:"joint_attention_dim"`
	PooledProjectionDim int  `json:"pooled_projection_dim"`
	// GuidanceEmbeds adds the guidance embedder (FLUX.1-dev); without it
	// the model is FLUX.1-schnell's.
	GuidanceEmbeds bool  `json:"guidance_embeds"`
	AxesDimsRope   []int `json:"axes_dims_rope"`

	// ControlNet features this package does not build (ControlNet-Union's
	// mode embedding, the pixel-space input_hint_block); Validate rejects
	// a config that sets them.
	NumMode                       *int `json:"num_mode,omitempty"`
	ConditioningEmbeddingChannels *int `json:"conditioning_embedding_channels,omitempty"`
}

// RopeTheta is FluxPosEmbed's θ (fixed in diffusers).
const RopeTheta = 10000

// DefaultConfig is FluxTransformer2DModel's constructor defaults, which are
// FLUX.1's sizes without the guidance embedding.
func DefaultConfig() Config {
	return Config{
		PatchSize:           1,
		InChannels:          64,
		NumLayers:           19,
		NumSingleLayers:     38,
		AttentionHeadDim:    128,
		NumAttentionHeads:   24,
		JointAttentionDim:   4096,
		PooledProjectionDim: 768,
		AxesDimsRope:        []int{16, 56, 56},
	}
}

// ParseConfig decodes a config.json over DefaultConfig and validates it.
func ParseConfig(data []byte) (Config, error) {
	c := DefaultConfig()
	if err := json.Unmarshal(data, &c); err != nil {
		return Config{}, fmt.Errorf("flux config: %w", err)
	}
	if c.AxesDimsRope == nil {
		c.AxesDimsRope = DefaultConfig().AxesDimsRope
	}
	if err := c.Validate(); err != nil {
		return Config{}, err
	}
	return c, nil
}

// LoadConfig reads and validates a config.json.
func LoadConfig(path string) (Config, error) {
	return jsonconfig.Load(path, "flux config", ParseConfig)
}

// InnerDim is num_attention_heads · attention_head_dim, the width of both
// streams.
func (c Config) InnerDim() int64 { return int64(c.NumAttentionHeads) * int64(c.AttentionHeadDim) }

// OutDim is the width of the transformer's output: patch_size² ·
// out_channels (out_channels defaulting to in_channels).
func (c Config) OutDim() int64 {
	out := c.InChannels
	if c.OutChannels != nil {
		out = *c.OutChannels
	}
	return int64(c.PatchSize) * int64(c.PatchSize) * int64(out)
}

// Validate checks the sizes are positive and consistent: the RoPE axes
// must split the head dim into even parts.
func (c Config) Validate() error {
	pos := map[string]int{"patch_size": c.PatchSize, "in_channels": c.InChannels, "attention_head_dim": c.AttentionHeadDim,
		"num_attention_heads": c.NumAttentionHeads, "joint_attention_dim": c.JointAttentionDim,
		"pooled_projection_dim": c.PooledProjectionDim}
	for k, v := range pos {
		if v <= 0 {
			return fmt.Errorf("flux config: %s must be positive, got %d", k, v)
		}
	}
	if c.OutChannels != nil && *c.OutChannels <= 0 {
		return fmt.Errorf("flux config: out_channels must be positive, got %d", *c.OutChannels)
	}
	if c.NumLayers < 0 || c.NumSingleLayers < 0 {
		return fmt.Errorf("flux config: negative block count (num_layers %d, num_single_layers %d)", c.NumLayers, c.NumSingleLayers)
	}
	sum := 0
	for _, d := range c.AxesDimsRope {
		if d <= 0 || d%2 != 0 {
			return fmt.Errorf("flux config: axes_dims_rope %v: every axis needs a positive even dim", c.AxesDimsRope)
		}
		sum += d
	}
	if len(c.AxesDimsRope) == 0 || sum != c.AttentionHeadDim {
		return fmt.Errorf("flux config: axes_dims_rope %v must sum to attention_head_dim %d", c.AxesDimsRope, c.AttentionHeadDim)
	}
	if c.NumMode != nil {
		return fmt.Errorf("flux config: num_mode %d (ControlNet-Union) is not supported", *c.NumMode)
	}
	if c.ConditioningEmbeddingChannels != nil {
		return fmt.Errorf("flux config: conditioning_embedding_channels %d (input_hint_block) is not supported", *c.ConditioningEmbeddingChannels)
	}
	return nil
}

// ControlNetConfigFromTransformer is the configuration
// FluxControlNetModel.from_transformer gives a ControlNet: the
// transformer's, with numLayers double and numSingleLayers single blocks.
// The head layout is the transformer's (from_transformer's
// attention_head_dim / num_attention_heads arguments, which DP²O-SR sets to
// FLUX.1's 128 and 24); override it in the result for another layout.
func ControlNetConfigFromTransformer(t Config, numLayers, numSingleLayers int) Config {
	c := t
	c.AxesDimsRope = append([]int(nil), t.AxesDimsRope...)
	c.NumLayers = numLayers
	c.NumSingleLayers = numSingleLayers
	c.OutChannels = nil
	c.NumMode = nil
	c.ConditioningEmbeddingChannels = nil
	return c
}
