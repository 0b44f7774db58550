package clip

import (
	"bytes"
	"encoding/json"
	"fmt"

	"github.com/dp2osr/dp2o/internal/jsonconfig"
)

// TextConfig is transformers' CLIPTextConfig, read from the config.json of
// a CLIPTextModel folder (SD2's text_encoder/, FLUX's text_encoder/). Unknown
// fields are ignored; missing ones take CLIPTextConfig's defaults
// (DefaultTextConfig).
type TextConfig struct {
	VocabSize             int     `json:"vocab_size"`
	HiddenSize            int     `json:"hidden_size"`
	IntermediateSize      int     `json:"intermediate_size"`
	ProjectionDim         int     `json:"projection_dim"`
	NumHiddenLayers       int     `json:"num_hidden_layers"`
	NumAttentionHeads     int     `json:"num_attention_heads"`
	MaxPositionEmbeddings int     `json:"max_position_embeddings"`
	HiddenAct             string  `json:"hidden_act"`
	LayerNormEps          float64 `json:"layer_norm_eps"`
	AttentionDropout      float64 `json:"attention_dropout"`
	PadTokenID            int64   `json:"pad_token_id"`
	BOSTokenID            int64   `json:"bos_token_id"`
	EOSTokenID            int64   `json:"eos_token_id"`
}

// LegacyEOSTokenID is the eos_token_id that older CLIP configs carry (SD2's
// and openai CLIP-L's): with it, transformers pools at the largest id of
// each row (the real eos, 49407, is the largest id of the vocabulary)
// instead of at the first eos_token_id.
const LegacyEOSTokenID = 2

// DefaultTextConfig is CLIPTextConfig's constructor defaults in transformers
// (the openai ViT-B/32 text tower).
func DefaultTextConfig() TextConfig {
	return TextConfig{
		VocabSize:             49408,
		HiddenSize:            512,
		IntermediateSize:      2048,
		ProjectionDim:         512,
		NumHiddenLayers:       12,
		NumAttentionHeads:     8,
		MaxPositionEmbeddings: 77,
		HiddenAct:             "quick_gelu",
		LayerNormEps:          1e-5,
		PadTokenID:            1,
		BOSTokenID:            49406,
		EOSTokenID:            49407,
	}
}

// SD2TextConfig is the configuration of Stable Diffusion 2's text encoder
// (OpenCLIP ViT-H/14's text tower in transformers' layout).
func SD2TextConfig() TextConfig {
	c := DefaultTextConfig()
	c.HiddenSize = 1024
	c.IntermediateSize = 4096
	c.NumHiddenLayers = 23
	c.NumAttentionHeads = 16
	c.HiddenAct = "gelu"
	c.BOSTokenID, c.EOSTokenID, c.PadTokenID = 0, 2, 1
	return c
}

// ParseTextConfig decodes a config.json body over DefaultTextConfig. A full
// CLIPConfig (model_type "clip") is accepted too: its text_config is used.
func ParseTextConfig(data []byte) (TextConfig, error) {
	var outer struct {
		TextConfig json.RawMessage `json:"text_config"`
	}
	if err := json.Unmarshal(data, &outer); err != nil {
		return TextConfig{}, fmt.Errorf("clip text config: %w", err)
	}
	if t := bytes.TrimSpace(outer.TextConfig); len(t) > 0 && !bytes.Equal(t, []byte("null")) {
		data = t
	}
	c := DefaultTextConfig()
	if err := json.Unmarshal(data, &c); err != nil {
		return TextConfig{}, fmt.Errorf("clip text config: %w", err)
	}
	if err := c.Validate(); err != nil {
		return TextConfig{}, err
	}
	return c, nil
}

// LoadTextConfig reads a config.json file.
func LoadTextConfig(path string) (TextConfig, error) {
	return jsonconfig.Load(path, "clip text config", ParseTextConfig)
}

// Validate checks that the configuration describes a model this package
// can build.
func (c TextConfig) Validate() error {
	switch {
	case c.VocabSize < 1:
		return fmt.Errorf("clip text config: vocab_size %d", c.VocabSize)
	case c.HiddenSize < 1:
		return fmt.Errorf("clip text config: hidden_size %d", c.HiddenSize)
	case c.IntermediateSize < 1:
		return fmt.Errorf("clip text config: intermediate_size %d", c.IntermediateSize)
	case c.NumHiddenLayers < 0:
		return fmt.Errorf("clip text config: num_hidden_layers %d", c.NumHiddenLayers)
	case c.NumAttentionHeads < 1 || c.HiddenSize%c.NumAttentionHeads != 0:
		return fmt.Errorf("clip text config: hidden_size %d is not divisible into %d attention heads", c.HiddenSize, c.NumAttentionHeads)
	case c.MaxPositionEmbeddings < 1:
		return fmt.Errorf("clip text config: max_position_embeddings %d", c.MaxPositionEmbeddings)
	case !(c.LayerNormEps > 0):
		return fmt.Errorf("clip text config: layer_norm_eps %g", c.LayerNormEps)
	}
	if _, err := textActivation(c.HiddenAct); err != nil {
		return err
	}
	return nil
}

// HeadDim is the size of one attention head.
func (c TextConfig) HeadDim() int { return c.HiddenSize / c.NumAttentionHeads }
