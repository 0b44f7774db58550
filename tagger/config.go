package tagger

import (
	"encoding/json"
	"fmt"

	"github.com/dp2osr/dp2o/internal/jsonconfig"
	"github.com/dp2osr/dp2o/vision/swin"
)

// HeadConfig is the tagging head's BertConfig (ram/configs/q2l_config.json);
// RAM sets encoder_width to 512 (the image_proj width) in code.
type HeadConfig struct {
	HiddenSize        int64   `json:"hidden_size"`
	NumAttentionHeads int64   `json:"num_attention_heads"`
	NumHiddenLayers   int64   `json:"num_hidden_layers"`
	IntermediateSize  int64   `json:"intermediate_size"`
	LayerNormEps      float64 `json:"layer_norm_eps"`
	HiddenAct         string  `json:"hidden_act"`
	EncoderWidth      int64   `json:"encoder_width"`
}

// Q2LConfig is q2l_config.json with RAM's encoder_width = 512.
func Q2LConfig() HeadConfig {
	return HeadConfig{HiddenSize: 768, NumAttentionHeads: 4, NumHiddenLayers: 2, IntermediateSize: 3072,
		LayerNormEps: 1e-12, HiddenAct: "gelu", EncoderWidth: 512}
}

// ParseHeadConfig reads q2l_config.json; as RAM does, encoder_width is
// then set to 512.
func ParseHeadConfig(data []byte) (HeadConfig, error) {
	c := Q2LConfig()
	if err := json.Unmarshal(data, &c); err != nil {
		return HeadConfig{}, fmt.Errorf("q2l config: %w", err)
	}
	c.EncoderWidth = 512
	return c, c.Validate()
}

// LoadHeadConfig reads a q2l_config.json file.
func LoadHeadConfig(path string) (HeadConfig, error) {
	return jsonconfig.Load(path, "q2l config", ParseHeadConfig)
}

// Validate checks the sizes.
func (c HeadConfig) Validate() error {
	if c.HiddenSize <= 0 || c.NumAttentionHeads <= 0 || c.HiddenSize%c.NumAttentionHeads != 0 ||
		c.NumHiddenLayers <= 0 || c.IntermediateSize <= 0 || c.EncoderWidth <= 0 || c.LayerNormEps <= 0 {
		return fmt.Errorf("q2l config: invalid sizes %+v", c)
	}
	return nil
}

// Config is the whole tagger: the encoder, the head, the tags and their
// thresholds (one per tag).
type Config struct {
	Vision swin.Config
	Head   HeadConfig
	// Tags are the tag names in class order; Thresholds their float32
	// class thresholds (see Thresholds).
	Tags       []string
	Thresholds []float32
}

// NumClasses is the number of tags.
func (c Config) NumClasses() int64 { return int64(len(c.Tags)) }

// Validate checks the parts and that every tag has a threshold.
func (c Config) Validate() error {
	if err := c.Vision.Validate(); err != nil {
		return err
	}
	if err := c.Head.Validate(); err != nil {
		return err
	}
	if len(c.Tags) == 0 {
		return fmt.Errorf("tagger: empty tag list")
	}
	if len(c.Thresholds) != len(c.Tags) {
		return fmt.Errorf("tagger: %d thresholds for %d tags", len(c.Thresholds), len(c.Tags))
	}
	return nil
}
