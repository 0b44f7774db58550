package unet

import (
	"fmt"
	"slices"

	"github.com/dp2osr/dp2o/internal/jsonconfig"
	"github.com/dp2osr/dp2o/torch"
)

// ControlNetConfig is diffusers' ControlNetModel configuration: the UNet
// fields of its encoder half (the up-block fields are unused) plus the
// conditioning ones.
type ControlNetConfig struct {
	Config
	ConditioningChannels             int    `json:"conditioning_channels"`
	ConditioningEmbeddingOutChannels []int  `json:"conditioning_embedding_out_channels"`
	ChannelOrder                     string `json:"controlnet_conditioning_channel_order"`
	GlobalPoolConditions             bool   `json:"global_pool_conditions"`
}

// DefaultConditioningEmbeddingOutChannels is ControlNetModel's default
// conditioning_embedding_out_channels.
var DefaultConditioningEmbeddingOutChannels = []int{16, 32, 96, 256}

// DefaultControlNetConfig is ControlNetModel's constructor defaults in
// diffusers.
func DefaultControlNetConfig() ControlNetConfig {
	return ControlNetConfig{
		Config:                           DefaultConfig(),
		ConditioningChannels:             3,
		ConditioningEmbeddingOutChannels: slices.Clone(DefaultConditioningEmbeddingOutChannels),
		ChannelOrder:                     "rgb",
	}
}

// ParseControlNetConfig decodes a ControlNet config.json body over
// DefaultControlNetConfig and validates it.
func ParseControlNetConfig(data []byte) (ControlNetConfig, error) {
	c := DefaultControlNetConfig()
	def := c.ConditioningEmbeddingOutChannels
	c.ConditioningEmbeddingOutChannels = nil
	if err := decodeOver(data, &c, &c.Config); err != nil {
		return ControlNetConfig{}, fmt.Errorf("controlnet config: %w", err)
	}
	if c.ConditioningEmbeddingOutChannels == nil {
		c.ConditioningEmbeddingOutChannels = def
	}
	c.fixed()
	if err := c.Validate(); err != nil {
		return ControlNetConfig{}, err
	}
	return c, nil
}

// LoadControlNetConfig reads a ControlNet config.json file.
func LoadControlNetConfig(path string) (ControlNetConfig, error) {
	return jsonconfig.Load(path, "controlnet config", ParseControlNetConfig)
}

// Validate checks that the configuration describes a model this package
// can build.
func (c ControlNetConfig) Validate() error {
	if _, err := c.layout(); err != nil {
		return err
	}
	if c.ConditioningChannels < 1 {
		return fmt.Errorf("controlnet config: conditioning_channels %d", c.ConditioningChannels)
	}
	if len(c.ConditioningEmbeddingOutChannels) == 0 {
		return fmt.Errorf("controlnet config: conditioning_embedding_out_channels is empty")
	}
	for _, ch := range c.ConditioningEmbeddingOutChannels {
		if ch < 1 {
			return fmt.Errorf("controlnet config: conditioning_embedding_out_channels %v", c.ConditioningEmbeddingOutChannels)
		}
	}
	if c.ChannelOrder != "rgb" && c.ChannelOrder != "bgr" {
		return fmt.Errorf("controlnet config: unknown controlnet_conditioning_channel_order %q", c.ChannelOrder)
	}
	return nil
}

// ControlNetOptions are the ControlNetModel.from_unet arguments besides the
// UNet; zero values take diffusers' defaults.
type ControlNetOptions struct {
	// ConditioningEmbeddingOutChannels: nil for (16, 32, 96, 256).
	ConditioningEmbeddingOutChannels []int
	// ConditioningChannels: 0 for 3.
	ConditioningChannels int
	// ChannelOrder: "" for "rgb".
	ChannelOrder string
	// Generator draws FromUNet's initial conditioning-embedding weights
	// (nil: libtorch's default generator).
	Generator *torch.Generator
}

// ControlNetConfigFromUNet is the configuration ControlNetModel.from_unet
// gives a ControlNet for a UNet of cfg: the UNet's encoder fields (the time
// embedding size is always 4·block_out_channels[0]) and the options.
func ControlNetConfigFromUNet(cfg Config, o ControlNetOptions) ControlNetConfig {
	c := DefaultControlNetConfig()
	c.Config = cfg
	c.fixed()
	if o.ConditioningEmbeddingOutChannels != nil {
		c.ConditioningEmbeddingOutChannels = slices.Clone(o.ConditioningEmbeddingOutChannels)
	}
	if o.ConditioningChannels != 0 {
		c.ConditioningChannels = o.ConditioningChannels
	}
	if o.ChannelOrder != "" {
		c.ChannelOrder = o.ChannelOrder
	}
	return c
}

// fixed resets the UNet fields that ControlNetModel does not take (it
// ignores them in a config file): its time embedding is always
// 4·block_out_channels[0] wide, conv_in is 3×3, resnets are not rescaled
// and the input is not centred.
func (c *ControlNetConfig) fixed() {
	c.TimeEmbeddingDim = nil
	c.ConvInKernel = 3
	c.ResnetOutScaleFactor = 1
	c.CenterInputSample = false
}
