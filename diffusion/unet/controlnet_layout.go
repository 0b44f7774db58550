package unet

import (
	"fmt"
	"slices"

	"github.com/dp2osr/dp2o/torch"
	"github.com/dp2osr/dp2o/torch/nn"
)

// condEmbeddingKey is the prefix of ControlNetConditioningEmbedding's keys.
const condEmbeddingKey = "controlnet_cond_embedding"

// ConditioningLayout is what a ControlNet checkpoint's own tensor shapes say
// about its conditioning embedding: the input channels of conv_in and the
// widths of the embedding's stages (conditioning_embedding_out_channels).
type ConditioningLayout struct {
	Channels int
	Widths   []int
}

// ConditioningLayoutFromSource reads the conditioning layout off the shapes
// of a ControlNet checkpoint: conv_in.weight is (w₀, channels, 3, 3) and
// blocks.{2i+1}.weight is (wᵢ₊₁, wᵢ, 3, 3). A flat released model.safetensors
// carries no config.json, and its conditioning widths need not be the
// defaults; this is how such a file is loaded as it is.
func ConditioningLayoutFromSource(src nn.Source) (ConditioningLayout, error) {
	shape := func(key string) ([]int64, bool) {
		s, _, ok := src.Meta(key)
		return s, ok
	}
	in, ok := shape(condEmbeddingKey + ".conv_in.weight")
	if !ok {
		return ConditioningLayout{}, fmt.Errorf("no %s.conv_in.weight: not a ControlNet checkpoint", condEmbeddingKey)
	}
	if len(in) != 4 {
		return ConditioningLayout{}, fmt.Errorf("%s.conv_in.weight has shape %v, want 4 dimensions", condEmbeddingKey, in)
	}
	l := ConditioningLayout{Channels: int(in[1]), Widths: []int{int(in[0])}}
	for i := 0; ; i++ {
		down, ok := shape(fmt.Sprintf("%s.blocks.%d.weight", condEmbeddingKey, 2*i+1))
		if !ok {
			break
		}
		if len(down) != 4 || int(down[1]) != l.Widths[i] {
			return ConditioningLayout{}, fmt.Errorf("%s.blocks.%d.weight has shape %v, want (w, %d, 3, 3)", condEmbeddingKey, 2*i+1, down, l.Widths[i])
		}
		l.Widths = append(l.Widths, int(down[0]))
	}
	return l, nil
}

// Check reports whether a configuration's conditioning fields agree with
// the layout of the weights, naming both when they do not.
func (l ConditioningLayout) Check(cfg ControlNetConfig) error {
	if cfg.ConditioningChannels != l.Channels || !slices.Equal(cfg.ConditioningEmbeddingOutChannels, l.Widths) {
		return fmt.Errorf("config.json says conditioning_channels %d, conditioning_embedding_out_channels %v; the weights have %d, %v",
			cfg.ConditioningChannels, cfg.ConditioningEmbeddingOutChannels, l.Channels, l.Widths)
	}
	return nil
}

// LoadControlNetFileFromUNet loads a flat ControlNet checkpoint (DP²O-SR's
// released model.safetensors) for a UNet of ucfg: the configuration is the
// one ControlNetModel.from_unet gives, with the conditioning layout read
// off the file's own tensor shapes. With cnConfig non-nil (a config.json
// beside the file), the file must agree with it.
func LoadControlNetFileFromUNet(ucfg Config, cnConfig *ControlNetConfig, path string, dtype torch.DType, dev torch.Device) (*ControlNet, error) {
	cn, err := nn.LoadFile(path, func(src nn.Source) (*ControlNet, error) {
		l, err := ConditioningLayoutFromSource(src)
		if err != nil {
			return nil, err
		}
		var cfg ControlNetConfig
		if cnConfig != nil {
			if err := l.Check(*cnConfig); err != nil {
				return nil, err
			}
			cfg = *cnConfig
		} else {
			cfg = ControlNetConfigFromUNet(ucfg, ControlNetOptions{ConditioningChannels: l.Channels, ConditioningEmbeddingOutChannels: l.Widths})
		}
		return ControlNetFromSource(src, cfg, dtype, dev)
	})
	if err != nil {
		return nil, fmt.Errorf("controlnet: %w", err)
	}
	return cn, nil
}
