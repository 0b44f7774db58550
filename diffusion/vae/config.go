package vae

import (
	"bytes"
	"encoding/json"
	"fmt"

	"github.com/dp2osr/dp2o/internal/jsonconfig"
)

// Config is diffusers' AutoencoderKL configuration, read from a model
// folder's config.json. Unknown fields are ignored; missing ones take
// diffusers' defaults (DefaultConfig), which is how the older SD2 files
// without scaling_factor load.
type Config struct {
	InChannels           int        `json:"in_channels"`
	OutChannels          int        `json:"out_channels"`
	DownBlockTypes       []string   `json:"down_block_types"`
	UpBlockTypes         []string   `json:"up_block_types"`
	BlockOutChannels     []int      `json:"block_out_channels"`
	LayersPerBlock       int        `json:"layers_per_block"`
	ActFn                string     `json:"act_fn"`
	LatentChannels       int        `json:"latent_channels"`
	NormNumGroups        int        `json:"norm_num_groups"`
	SampleSize           SampleSize `json:"sample_size"`
	ScalingFactor        float64    `json:"scaling_factor"`
	ShiftFactor          *float64   `json:"shift_factor"`
	LatentsMean          []float64  `json:"latents_mean"`
	LatentsStd           []float64  `json:"latents_std"`
	ForceUpcast          bool       `json:"force_upcast"`
	UseQuantConv         bool       `json:"use_quant_conv"`
	UsePostQuantConv     bool       `json:"use_post_quant_conv"`
	MidBlockAddAttention bool       `json:"mid_block_add_attention"`
}

// SampleSize is config.sample_size, which diffusers allows to be an int or
// a [height, width] list; tiling uses the first entry.
type SampleSize []int

// UnmarshalJSON accepts an int or a list of ints.
func (s *SampleSize) UnmarshalJSON(b []byte) error {
	b = bytes.TrimSpace(b)
	if bytes.Equal(b, []byte("null")) {
		return nil
	}
	if len(b) > 0 && b[0] == '[' {
		var l []int
		if err := json.Unmarshal(b, &l); err != nil {
			return fmt.Errorf("sample_size: %w", err)
		}
		*s = l
		return nil
	}
	var n int
	if err := json.Unmarshal(b, &n); err != nil {
		return fmt.Errorf("sample_size: %w", err)
	}
	*s = SampleSize{n}
	return nil
}

// MarshalJSON writes a single size as an int, as diffusers does.
func (s SampleSize) MarshalJSON() ([]byte, error) {
	if len(s) == 1 {
		return json.Marshal(s[0])
	}
	return json.Marshal([]int(s))
}

// First is the size tiling uses (diffusers takes sample_size[0] of a list).
func (s SampleSize) First() int {
	if len(s) == 0 {
		return 0
	}
	return s[0]
}

// DefaultConfig is AutoencoderKL's constructor defaults in diffusers.
func DefaultConfig() Config {
	return Config{
		InChannels:           3,
		OutChannels:          3,
		DownBlockTypes:       []string{"DownEncoderBlock2D"},
		UpBlockTypes:         []string{"UpDecoderBlock2D"},
		BlockOutChannels:     []int{64},
		LayersPerBlock:       1,
		ActFn:                "silu",
		LatentChannels:       4,
		NormNumGroups:        32,
		SampleSize:           SampleSize{32},
		ScalingFactor:        0.18215,
		ForceUpcast:          true,
		UseQuantConv:         true,
		UsePostQuantConv:     true,
		MidBlockAddAttention: true,
	}
}

// SD2Config is the configuration of Stable Diffusion 2's VAE (the file
// shipped with SD2-base, with the defaults filled in).
func SD2Config() Config {
	c := DefaultConfig()
	c.BlockOutChannels = []int{128, 256, 512, 512}
	c.DownBlockTypes = []string{"DownEncoderBlock2D", "DownEncoderBlock2D", "DownEncoderBlock2D", "DownEncoderBlock2D"}
	c.UpBlockTypes = []string{"UpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D"}
	c.LayersPerBlock = 2
	c.SampleSize = SampleSize{512}
	return c
}

// ParseConfig decodes a config.json body over DefaultConfig.
func ParseConfig(data []byte) (Config, error) {
	c := DefaultConfig()
	// A list in the file replaces the default list rather than merging into it.
	c.DownBlockTypes, c.UpBlockTypes, c.BlockOutChannels = nil, nil, nil
	if err := json.Unmarshal(data, &c); err != nil {
		return Config{}, fmt.Errorf("vae config: %w", err)
	}
	d := DefaultConfig()
	if c.DownBlockTypes == nil {
		c.DownBlockTypes = d.DownBlockTypes
	}
	if c.UpBlockTypes == nil {
		c.UpBlockTypes = d.UpBlockTypes
	}
	if c.BlockOutChannels == nil {
		c.BlockOutChannels = d.BlockOutChannels
	}
	if err := c.Validate(); err != nil {
		return Config{}, err
	}
	return c, nil
}

// LoadConfig reads a config.json file.
func LoadConfig(path string) (Config, error) {
	return jsonconfig.Load(path, "vae config", ParseConfig)
}

// Validate checks that the configuration describes a model this package
// can build.
func (c Config) Validate() error {
	n := len(c.BlockOutChannels)
	switch {
	case n == 0:
		return fmt.Errorf("vae config: block_out_channels is empty")
	case len(c.DownBlockTypes) != n:
		return fmt.Errorf("vae config: %d down_block_types for %d block_out_channels", len(c.DownBlockTypes), n)
	case len(c.UpBlockTypes) != n:
		return fmt.Errorf("vae config: %d up_block_types for %d block_out_channels", len(c.UpBlockTypes), n)
	case c.LayersPerBlock < 1:
		return fmt.Errorf("vae config: layers_per_block %d", c.LayersPerBlock)
	case c.InChannels < 1 || c.OutChannels < 1 || c.LatentChannels < 1:
		return fmt.Errorf("vae config: bad channel counts (in %d, out %d, latent %d)", c.InChannels, c.OutChannels, c.LatentChannels)
	case c.NormNumGroups < 1:
		return fmt.Errorf("vae config: norm_num_groups %d", c.NormNumGroups)
	}
	for _, t := range c.DownBlockTypes {
		if t != "DownEncoderBlock2D" {
			return fmt.Errorf("vae config: unsupported down block type %q", t)
		}
	}
	for _, t := range c.UpBlockTypes {
		if t != "UpDecoderBlock2D" {
			return fmt.Errorf("vae config: unsupported up block type %q", t)
		}
	}
	for _, ch := range c.BlockOutChannels {
		if ch < 1 || ch%c.NormNumGroups != 0 {
			return fmt.Errorf("vae config: %d channels not divisible into %d groups", ch, c.NormNumGroups)
		}
	}
	if _, err := activation(c.ActFn); err != nil {
		return err
	}
	return nil
}

// DownsampleFactor is the spatial ratio between images and latents
// (2^(blocks−1): 8 for SD2).
func (c Config) DownsampleFactor() int { return 1 << (len(c.BlockOutChannels) - 1) }

// Shift is config.shift_factor, 0 when unset (SD2).
func (c Config) Shift() float64 {
	if c.ShiftFactor == nil {
		return 0
	}
	return *c.ShiftFactor
}
