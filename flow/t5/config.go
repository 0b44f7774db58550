package t5

import (
	"encoding/json"
	"fmt"
	"strings"

	"github.com/dp2osr/dp2o/internal/jsonconfig"
)

// Config is transformers' T5Config as read from the config.json of a
// T5EncoderModel folder (FLUX's text_encoder_2/). Unknown fields are
// ignored; missing ones take T5Config's defaults (DefaultConfig).
type Config struct {
	VocabSize    int     `json:"vocab_size"`
	DModel       int     `json:"d_model"`
	DKV          int     `json:"d_kv"`
	DFF          int     `json:"d_ff"`
	NumLayers    int     `json:"num_layers"`
	NumHeads     int     `json:"num_heads"`
	NumBuckets   int     `json:"relative_attention_num_buckets"`
	MaxDistance  int     `json:"relative_attention_max_distance"`
	LayerNormEps float64 `json:"layer_norm_epsilon"`
	// FeedForwardProj is "ACT" (T5: "relu") or "gated-ACT" (T5 v1.1:
	// "gated-gelu"); it sets DenseActFn and IsGatedAct unless the file
	// gives those explicitly, as T5Config does.
	FeedForwardProj string `json:"feed_forward_proj"`
	// DenseActFn is the feed-forward activation (transformers' ACT2FN name;
	// "gated-gelu" means "gelu_new").
	DenseActFn string `json:"dense_act_fn"`
	// IsGatedAct selects the gated feed-forward wo(act(wi_0 x) · wi_1 x)
	// instead of wo(act(wi x)).
	IsGatedAct  bool    `json:"is_gated_act"`
	PadTokenID  int64   `json:"pad_token_id"`
	EOSTokenID  int64   `json:"eos_token_id"`
	DropoutRate float64 `json:"dropout_rate"`
}

// DefaultConfig is T5Config's constructor defaults (t5-small).
func DefaultConfig() Config {
	return Config{
		VocabSize:       32128,
		DModel:          512,
		DKV:             64,
		DFF:             2048,
		NumLayers:       6,
		NumHeads:        8,
		NumBuckets:      32,
		MaxDistance:     128,
		LayerNormEps:    1e-6,
		FeedForwardProj: "relu",
		DenseActFn:      "relu",
		PadTokenID:      0,
		EOSTokenID:      1,
		DropoutRate:     0.1,
	}
}

// ParseConfig decodes a config.json body over DefaultConfig and derives
// the activation from feed_forward_proj as T5Config does.
func ParseConfig(data []byte) (Config, error) {
	c := DefaultConfig()
	if err := json.Unmarshal(data, &c); err != nil {
		return Config{}, fmt.Errorf("t5 config: %w", err)
	}
	var given map[string]json.RawMessage
	if err := json.Unmarshal(data, &given); err != nil {
		return Config{}, fmt.Errorf("t5 config: %w", err)
	}
	parts := strings.Split(c.FeedForwardProj, "-")
	if len(parts) > 2 || (len(parts) == 2 && parts[0] != "gated") || parts[len(parts)-1] == "" {
		return Config{}, fmt.Errorf("t5 config: feed_forward_proj %q is not a valid activation: use \"gated-{ACT}\" or \"{ACT}\"", c.FeedForwardProj)
	}
	// T5Config sets these from feed_forward_proj; values written in the
	// file (save_pretrained writes both) are applied after that.
	if _, ok := given["dense_act_fn"]; !ok {
		c.DenseActFn = parts[len(parts)-1]
		if c.FeedForwardProj == "gated-gelu" {
			c.DenseActFn = "gelu_new"
		}
	}
	if _, ok := given["is_gated_act"]; !ok {
		c.IsGatedAct = len(parts) == 2
	}
	if err := c.Validate(); err != nil {
		return Config{}, err
	}
	return c, nil
}

// LoadConfig reads a config.json file.
func LoadConfig(path string) (Config, error) {
	return jsonconfig.Load(path, "t5 config", ParseConfig)
}

// Validate checks that the configuration describes an encoder this package
// can build.
func (c Config) Validate() error {
	switch {
	case c.VocabSize < 1:
		return fmt.Errorf("t5 config: vocab_size %d", c.VocabSize)
	case c.DModel < 1:
		return fmt.Errorf("t5 config: d_model %d", c.DModel)
	case c.DKV < 1:
		return fmt.Errorf("t5 config: d_kv %d", c.DKV)
	case c.DFF < 1:
		return fmt.Errorf("t5 config: d_ff %d", c.DFF)
	case c.NumLayers < 0:
		return fmt.Errorf("t5 config: num_layers %d", c.NumLayers)
	case c.NumHeads < 1:
		return fmt.Errorf("t5 config: num_heads %d", c.NumHeads)
	case c.NumBuckets < 2:
		return fmt.Errorf("t5 config: relative_attention_num_buckets %d (need at least 2)", c.NumBuckets)
	case c.MaxDistance < 1:
		return fmt.Errorf("t5 config: relative_attention_max_distance %d", c.MaxDistance)
	case !(c.LayerNormEps > 0):
		return fmt.Errorf("t5 config: layer_norm_epsilon %g", c.LayerNormEps)
	}
	if _, err := activation(c.DenseActFn); err != nil {
		return err
	}
	return nil
}

// InnerDim is num_heads·d_kv, the width of the attention projections.
func (c Config) InnerDim() int { return c.NumHeads * c.DKV }
