package unet

import "fmt"

// blockLayout is the per-block expansion of a config shared by the UNet and
// the ControlNet: the down path and the mid block.
type blockLayout struct {
	channels    []int64
	layers      []int
	heads       []int
	crossDim    []int
	tLayers     []int
	onlyCross   []bool
	crossAttn   []bool // down block i has attentions
	midType     string // "" for none
	timeDim     int64
	act         string
	groups      int64
	eps         float64
	linearProj  bool
	upcast      bool
	downPadding int64
	midScale    float64
	outScale    float64
}

// layout validates the fields of the down path and expands them per block.
func (c Config) layout() (*blockLayout, error) {
	n := len(c.BlockOutChannels)
	if n == 0 {
		return nil, fmt.Errorf("unet config: block_out_channels is empty")
	}
	if len(c.DownBlockTypes) != n {
		return nil, fmt.Errorf("unet config: %d down_block_types for %d block_out_channels", len(c.DownBlockTypes), n)
	}
	l := &blockLayout{act: c.ActFn, groups: int64(c.NormNumGroups), eps: c.NormEps,
		linearProj: c.UseLinearProjection, upcast: c.UpcastAttention,
		downPadding: int64(c.DownsamplePadding), midScale: c.MidBlockScaleFactor, outScale: c.ResnetOutScaleFactor}
	var err error
	if l.layers, err = c.LayersPerBlock.PerBlock(n, "layers_per_block"); err != nil {
		return nil, err
	}
	heads := c.NumAttentionHeads
	if len(heads) == 0 {
		heads = c.AttentionHeadDim
	}
	if l.heads, err = heads.PerBlock(n, "attention_head_dim"); err != nil {
		return nil, err
	}
	if l.crossDim, err = c.CrossAttentionDim.PerBlock(n, "cross_attention_dim"); err != nil {
		return nil, err
	}
	if l.tLayers, err = c.TransformerLayersPerBlock.PerBlock(n, "transformer_layers_per_block"); err != nil {
		return nil, err
	}
	if l.onlyCross, err = c.OnlyCrossAttention.PerBlock(n); err != nil {
		return nil, err
	}
	switch {
	case c.InChannels < 1:
		return nil, fmt.Errorf("unet config: in_channels %d", c.InChannels)
	case c.NormNumGroups < 1:
		return nil, fmt.Errorf("unet config: norm_num_groups %d", c.NormNumGroups)
	case c.ConvInKernel < 1 || c.ConvInKernel%2 == 0:
		return nil, fmt.Errorf("unet config: conv_in_kernel %d (want an odd size)", c.ConvInKernel)
	case c.DownsamplePadding < 0:
		return nil, fmt.Errorf("unet config: downsample_padding %d", c.DownsamplePadding)
	case c.ResnetOutScaleFactor == 0 || c.MidBlockScaleFactor == 0:
		return nil, fmt.Errorf("unet config: zero resnet_out_scale_factor or mid_block_scale_factor")
	}
	if _, err := activation(c.ActFn); err != nil {
		return nil, err
	}
	if err := c.unsupported(); err != nil {
		return nil, err
	}
	for i, t := range c.DownBlockTypes {
		switch t {
		case "CrossAttnDownBlock2D":
			l.crossAttn = append(l.crossAttn, true)
		case "DownBlock2D":
			l.crossAttn = append(l.crossAttn, false)
		default:
			return nil, fmt.Errorf("unet config: unsupported down block type %q", t)
		}
		ch := c.BlockOutChannels[i]
		if ch < 1 || ch%c.NormNumGroups != 0 {
			return nil, fmt.Errorf("unet config: block %d: %d channels not divisible into %d groups", i, ch, c.NormNumGroups)
		}
		if l.layers[i] < 1 {
			return nil, fmt.Errorf("unet config: block %d: layers_per_block %d", i, l.layers[i])
		}
		if l.heads[i] < 1 || ch%l.heads[i] != 0 {
			return nil, fmt.Errorf("unet config: block %d: %d channels not divisible into %d heads", i, ch, l.heads[i])
		}
		if l.tLayers[i] < 1 || l.crossDim[i] < 1 {
			return nil, fmt.Errorf("unet config: block %d: bad transformer depth %d or cross_attention_dim %d", i, l.tLayers[i], l.crossDim[i])
		}
		l.channels = append(l.channels, int64(ch))
	}
	if c.MidBlockType != nil {
		switch *c.MidBlockType {
		case "UNetMidBlock2DCrossAttn":
			l.midType = *c.MidBlockType
		default:
			return nil, fmt.Errorf("unet config: unsupported mid block type %q", *c.MidBlockType)
		}
	}
	l.timeDim = 4 * l.channels[0]
	if c.TimeEmbeddingDim != nil {
		l.timeDim = int64(*c.TimeEmbeddingDim)
	}
	if c.BlockOutChannels[0]%2 != 0 {
		return nil, fmt.Errorf("unet config: block_out_channels[0] %d is odd (sinusoidal time embedding)", c.BlockOutChannels[0])
	}
	return l, nil
}

// unsupported names the first feature set in c that this package does not
// implement.
func (c Config) unsupported() error {
	var what string
	switch {
	case c.ClassEmbedType != nil || c.NumClassEmbeds != nil:
		what = "class embeddings"
	case c.AdditionEmbedType != nil:
		what = "addition_embed_type " + *c.AdditionEmbedType
	case c.EncoderHidDim != nil || c.EncoderHidDimType != nil:
		what = "encoder_hid_dim"
	case c.TimeCondProjDim != nil:
		what = "time_cond_proj_dim"
	case c.CrossAttentionNorm != nil:
		what = "cross_attention_norm " + *c.CrossAttentionNorm
	case c.TimeEmbeddingActFn != nil:
		what = "time_embedding_act_fn"
	case c.TimestepPostAct != nil:
		what = "timestep_post_act"
	case c.ClassEmbeddingsConcat:
		what = "class_embeddings_concat"
	case c.DualCrossAttention:
		what = "dual_cross_attention"
	case c.ResnetSkipTimeAct:
		what = "resnet_skip_time_act"
	case c.TimeEmbeddingType != "" && c.TimeEmbeddingType != "positional":
		what = "time_embedding_type " + c.TimeEmbeddingType
	case c.ResnetTimeScaleShift != "" && c.ResnetTimeScaleShift != "default":
		what = "resnet_time_scale_shift " + c.ResnetTimeScaleShift
	case c.AttentionType != "" && c.AttentionType != "default":
		what = "attention_type " + c.AttentionType
	default:
		return nil
	}
	return fmt.Errorf("unet config: %s is not supported", what)
}
