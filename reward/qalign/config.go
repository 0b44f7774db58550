package qalign

import (
	"encoding/json"
	"fmt"
	"os"
)

// ConfigFile is the model configuration of the checkpoint folder.
const ConfigFile = "config.json"

// VisionConfig is mPLUG-Owl2's MplugOwlVisionConfig (visual_config.visual_model).
type VisionConfig struct {
	HiddenSize        int64   `json:"hidden_size"`
	IntermediateSize  int64   `json:"intermediate_size"`
	NumHiddenLayers   int     `json:"num_hidden_layers"`
	NumAttentionHeads int64   `json:"num_attention_heads"`
	NumChannels       int64   `json:"num_channels"`
	ImageSize         int64   `json:"image_size"`
	PatchSize         int64   `json:"patch_size"`
	HiddenAct         string  `json:"hidden_act"`
	LayerNormEps      float64 `json:"layer_norm_eps"`
}

// AbstractorConfig is MplugOwlVisualAbstractorConfig (visual_config.visual_abstractor).
type AbstractorConfig struct {
	NumLearnableQueries int64   `json:"num_learnable_queries"`
	HiddenSize          int64   `json:"hidden_size"`
	NumHiddenLayers     int     `json:"num_hidden_layers"`
	NumAttentionHeads   int64   `json:"num_attention_heads"`
	IntermediateSize    int64   `json:"intermediate_size"`
	LayerNormEps        float64 `json:"layer_norm_eps"`
	EncoderHiddenSize   int64   `json:"encoder_hidden_size"`
	GridSize            int64   `json:"grid_size"`
}

// Config is MPLUGOwl2Config: the LLaMA fields at the top level, the vision
// tower and the abstractor under visual_config. Absent fields keep the
// published defaults (DefaultConfig).
type Config struct {
	VocabSize         int64           `json:"vocab_size"`
	HiddenSize        int64           `json:"hidden_size"`
	IntermediateSize  int64           `json:"intermediate_size"`
	NumHiddenLayers   int             `json:"num_hidden_layers"`
	NumAttentionHeads int64           `json:"num_attention_heads"`
	NumKeyValueHeads  int64           `json:"num_key_value_heads"`
	HiddenAct         string          `json:"hidden_act"`
	RMSNormEps        float64         `json:"rms_norm_eps"`
	RopeTheta         float64         `json:"rope_theta"`
	RopeScaling       json.RawMessage `json:"rope_scaling"`
	AttentionBias     bool            `json:"attention_bias"`
	PretrainingTP     int             `json:"pretraining_tp"`
	TieWordEmbeddings bool            `json:"tie_word_embeddings"`
	Vision            VisionConfig
	Abstractor        AbstractorConfig
}

// DefaultConfig is MPLUGOwl2Config() with its DEFAULT_VISUAL_CONFIG: the
// published q-future/one-align sizes (LLaMA-2-7B, ViT-L/14 at 448, a
// 6-layer abstractor with 64 queries).
func DefaultConfig() Config {
	return Config{VocabSize: 32000, HiddenSize: 4096, IntermediateSize: 11008, NumHiddenLayers: 32,
		NumAttentionHeads: 32, NumKeyValueHeads: 32, HiddenAct: "silu", RMSNormEps: 1e-6, RopeTheta: 10000,
		PretrainingTP: 1,
		Vision: VisionConfig{HiddenSize: 1024, IntermediateSize: 4096, NumHiddenLayers: 24, NumAttentionHeads: 16,
			NumChannels: 3, ImageSize: 448, PatchSize: 14, HiddenAct: "quick_gelu", LayerNormEps: 1e-6},
		Abstractor: AbstractorConfig{NumLearnableQueries: 64, HiddenSize: 1024, NumHiddenLayers: 6, NumAttentionHeads: 16,
			IntermediateSize: 2816, LayerNormEps: 1e-6, EncoderHiddenSize: 1024, GridSize: 32}}
}

// ParseConfig reads a config.json over DefaultConfig and checks it.
func ParseConfig(b []byte) (Config, error) {
	c := DefaultConfig()
	c.NumKeyValueHeads = 0
	var raw struct {
		VisualConfig *struct {
			VisualModel      json.RawMessage `json:"visual_model"`
			VisualAbstractor json.RawMessage `json:"visual_abstractor"`
		} `json:"visual_config"`
	}
	if err := json.Unmarshal(b, &c); err != nil {
		return Config{}, err
	}
	if err := json.Unmarshal(b, &raw); err != nil {
		return Config{}, err
	}
	if c.NumKeyValueHeads == 0 {
		c.NumKeyValueHeads = c.NumAttentionHeads
	}
	if v := raw.VisualConfig; v != nil {
		if v.VisualModel != nil {
			if err := json.Unmarshal(v.VisualModel, &c.Vision); err != nil {
				return Config{}, fmt.Errorf("visual_model: %w", err)
			}
		}
		if v.VisualAbstractor != nil {
			if err := json.Unmarshal(v.VisualAbstractor, &c.Abstractor); err != nil {
				return Config{}, fmt.Errorf("visual_abstractor: %w", err)
			}
		}
	}
	return c, c.Check()
}

// LoadConfig reads config.json.
func LoadConfig(path string) (Config, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return Config{}, err
	}
	c, err := ParseConfig(b)
	if err != nil {
		return Config{}, fmt.Errorf("%s: %w", path, err)
	}
	return c, nil
}

// Check rejects configurations the port does not run.
func (c Config) Check() error {
	pos := func(name string, v int64) error {
		if v <= 0 {
			return fmt.Errorf("%s %d: want > 0", name, v)
		}
		return nil
	}
	for _, e := range []error{
		pos("vocab_size", c.VocabSize), pos("hidden_size", c.HiddenSize), pos("intermediate_size", c.IntermediateSize),
		pos("num_hidden_layers", int64(c.NumHiddenLayers)), pos("num_attention_heads", c.NumAttentionHeads),
		pos("num_key_value_heads", c.NumKeyValueHeads),
		pos("visual_model.hidden_size", c.Vision.HiddenSize), pos("visual_model.num_hidden_layers", int64(c.Vision.NumHiddenLayers)),
		pos("visual_model.num_attention_heads", c.Vision.NumAttentionHeads), pos("visual_model.patch_size", c.Vision.PatchSize),
		pos("visual_model.image_size", c.Vision.ImageSize), pos("visual_model.intermediate_size", c.Vision.IntermediateSize),
		pos("visual_abstractor.hidden_size", c.Abstractor.HiddenSize), pos("visual_abstractor.num_hidden_layers", int64(c.Abstractor.NumHiddenLayers)),
		pos("visual_abstractor.num_attention_heads", c.Abstractor.NumAttentionHeads),
		pos("visual_abstractor.num_learnable_queries", c.Abstractor.NumLearnableQueries),
		pos("visual_abstractor.intermediate_size", c.Abstractor.IntermediateSize), pos("visual_abstractor.grid_size", c.Abstractor.GridSize),
	} {
		if e != nil {
			return e
		}
	}
	switch {
	case c.HiddenSize%c.NumAttentionHeads != 0 || (c.HiddenSize/c.NumAttentionHeads)%2 != 0:
		return fmt.Errorf("hidden_size %d and %d heads: want an even head size", c.HiddenSize, c.NumAttentionHeads)
	case c.NumAttentionHeads%c.NumKeyValueHeads != 0:
		return fmt.Errorf("%d heads and %d key/value heads", c.NumAttentionHeads, c.NumKeyValueHeads)
	case c.Vision.HiddenSize%c.Vision.NumAttentionHeads != 0:
		return fmt.Errorf("visual_model hidden_size %d and %d heads", c.Vision.HiddenSize, c.Vision.NumAttentionHeads)
	case c.Abstractor.HiddenSize%c.Abstractor.NumAttentionHeads != 0 || c.Abstractor.HiddenSize%4 != 0:
		return fmt.Errorf("visual_abstractor hidden_size %d and %d heads", c.Abstractor.HiddenSize, c.Abstractor.NumAttentionHeads)
	case c.Abstractor.EncoderHiddenSize != c.Vision.HiddenSize || c.Abstractor.HiddenSize != c.Vision.HiddenSize:
		// The abstractor normalises the vision tokens with its own width
		// and concatenates them with its queries.
		return fmt.Errorf("visual_abstractor hidden_size %d / encoder_hidden_size %d differ from the vision width %d",
			c.Abstractor.HiddenSize, c.Abstractor.EncoderHiddenSize, c.Vision.HiddenSize)
	case c.Vision.ImageSize%c.Vision.PatchSize != 0 || c.Vision.ImageSize/c.Vision.PatchSize != c.Abstractor.GridSize:
		return fmt.Errorf("image_size %d / patch %d does not give the abstractor's grid %d",
			c.Vision.ImageSize, c.Vision.PatchSize, c.Abstractor.GridSize)
	case c.Vision.NumChannels != 3:
		return fmt.Errorf("visual_model num_channels %d: want 3", c.Vision.NumChannels)
	case c.Vision.HiddenAct != "quick_gelu":
		return fmt.Errorf("visual_model hidden_act %q: want quick_gelu", c.Vision.HiddenAct)
	case c.HiddenAct != "silu":
		return fmt.Errorf("hidden_act %q: want silu", c.HiddenAct)
	case len(c.RopeScaling) > 0 && string(c.RopeScaling) != "null":
		return fmt.Errorf("rope_scaling %s is not supported", c.RopeScaling)
	case c.AttentionBias:
		return fmt.Errorf("attention_bias is not supported")
	case c.PretrainingTP > 1:
		return fmt.Errorf("pretraining_tp %d is not supported", c.PretrainingTP)
	case c.TieWordEmbeddings:
		return fmt.Errorf("tie_word_embeddings is not supported (one-align has a separate lm_head)")
	case !(c.RMSNormEps > 0) || !(c.Vision.LayerNormEps > 0) || !(c.Abstractor.LayerNormEps > 0) || !(c.RopeTheta > 0):
		return fmt.Errorf("non-positive eps or rope_theta")
	}
	return nil
}

// VisualTokens is the number of visual tokens spliced into the prompt:
// the learnable queries plus vit_eos.
func (c Config) VisualTokens() int64 { return c.Abstractor.NumLearnableQueries + 1 }
