package swin

import (
	"encoding/json"
	"fmt"

	"github.com/dp2osr/dp2o/internal/jsonconfig"
)

// Config is the SwinTransformer constructor's configuration. JSON names are
// the constructor's argument names (img_size, embed_dim, depths, …).
type Config struct {
	ImageSize  int64   `json:"img_size"`
	PatchSize  int64   `json:"patch_size"`
	InChans    int64   `json:"in_chans"`
	EmbedDim   int64   `json:"embed_dim"`
	Depths     []int64 `json:"depths"`
	NumHeads   []int64 `json:"num_heads"`
	WindowSize int64   `json:"window_size"`
	MLPRatio   float64 `json:"mlp_ratio"`
	QKVBias    bool    `json:"qkv_bias"`
	// QKScale overrides head_dim^-0.5 when non-zero (qk_scale).
	QKScale float64 `json:"qk_scale"`
	// APE adds the absolute position embedding (absolute_pos_embed).
	APE       bool `json:"ape"`
	PatchNorm bool `json:"patch_norm"`
	// LayerNormEps is nn.LayerNorm's eps (1e-5).
	LayerNormEps float64 `json:"layer_norm_eps"`
}

// DefaultConfig is the constructor's defaults (Swin-T at 224 px).
func DefaultConfig() Config {
	return Config{ImageSize: 224, PatchSize: 4, InChans: 3, EmbedDim: 96, Depths: []int64{2, 2, 6, 2},
		NumHeads: []int64{3, 6, 12, 24}, WindowSize: 7, MLPRatio: 4, QKVBias: true, PatchNorm: true, LayerNormEps: 1e-5}
}

// ParseConfig reads a JSON config; absent fields keep DefaultConfig's values.
func ParseConfig(data []byte) (Config, error) {
	c := DefaultConfig()
	if err := json.Unmarshal(data, &c); err != nil {
		return Config{}, fmt.Errorf("swin config: %w", err)
	}
	return c, c.Validate()
}

// LoadConfig reads a JSON config file (see ParseConfig).
func LoadConfig(path string) (Config, error) {
	return jsonconfig.Load(path, "swin config", ParseConfig)
}

// RAMConfig is RAM's vision config file (ram/configs/swin/config_swin*.json):
// vision_width, image_res, window_size, embed_dim, depths, num_heads.
type RAMConfig struct {
	VisionWidth int64   `json:"vision_width"`
	ImageRes    int64   `json:"image_res"`
	WindowSize  int64   `json:"window_size"`
	EmbedDim    int64   `json:"embed_dim"`
	Depths      []int64 `json:"depths"`
	NumHeads    []int64 `json:"num_heads"`
}

// Swin returns the encoder RAM builds from the file: patch 4, MLP ratio 4,
// qkv bias, no absolute position embedding, patch norm.
func (r RAMConfig) Swin() (Config, error) {
	c := DefaultConfig()
	c.ImageSize, c.EmbedDim, c.Depths, c.NumHeads, c.WindowSize = r.ImageRes, r.EmbedDim, r.Depths, r.NumHeads, r.WindowSize
	if err := c.Validate(); err != nil {
		return Config{}, err
	}
	if w := c.NumFeatures(); r.VisionWidth != 0 && w != r.VisionWidth {
		return Config{}, fmt.Errorf("swin config: vision_width %d, but the stages end at %d channels", r.VisionWidth, w)
	}
	return c, nil
}

// SwinL384 is RAM's Swin-L (config_swinL_384.json): 384 px, embed 192,
// depths 2/2/18/2, heads 6/12/24/48, window 12.
func SwinL384() Config {
	c, _ := RAMConfig{VisionWidth: 1536, ImageRes: 384, WindowSize: 12, EmbedDim: 192,
		Depths: []int64{2, 2, 18, 2}, NumHeads: []int64{6, 12, 24, 48}}.Swin()
	return c
}

// NumFeatures is the width of the last stage: embed_dim·2^(stages−1).
func (c Config) NumFeatures() int64 { return c.EmbedDim << (len(c.Depths) - 1) }

// PatchesResolution is the token grid after the patch embedding.
func (c Config) PatchesResolution() int64 { return c.ImageSize / c.PatchSize }

// Validate checks that the stages fit together.
func (c Config) Validate() error {
	switch {
	case c.ImageSize <= 0 || c.PatchSize <= 0 || c.InChans <= 0 || c.EmbedDim <= 0 || c.WindowSize <= 0:
		return fmt.Errorf("swin config: sizes must be positive (img_size %d, patch_size %d, in_chans %d, embed_dim %d, window_size %d)",
			c.ImageSize, c.PatchSize, c.InChans, c.EmbedDim, c.WindowSize)
	case len(c.Depths) == 0 || len(c.Depths) != len(c.NumHeads):
		return fmt.Errorf("swin config: %d depths and %d head counts", len(c.Depths), len(c.NumHeads))
	case c.MLPRatio <= 0 || c.LayerNormEps <= 0:
		return fmt.Errorf("swin config: mlp_ratio %g and layer_norm_eps %g must be positive", c.MLPRatio, c.LayerNormEps)
	}
	res := c.PatchesResolution()
	if res*c.PatchSize != c.ImageSize {
		return fmt.Errorf("swin config: img_size %d is not a multiple of patch_size %d", c.ImageSize, c.PatchSize)
	}
	for i := range c.Depths {
		dim := c.EmbedDim << i
		if c.Depths[i] <= 0 || c.NumHeads[i] <= 0 || dim%c.NumHeads[i] != 0 {
			return fmt.Errorf("swin config: stage %d: depth %d, %d heads for %d channels", i, c.Depths[i], c.NumHeads[i], dim)
		}
		r := res >> i
		w := min(c.WindowSize, r)
		if r <= 0 || r%w != 0 {
			return fmt.Errorf("swin config: stage %d: a %d×%d grid does not split into %d×%d windows", i, r, r, w, w)
		}
		if i < len(c.Depths)-1 && r%2 != 0 {
			return fmt.Errorf("swin config: stage %d: patch merging needs an even grid, got %d", i, r)
		}
	}
	return nil
}
