// Package vae is diffusers' AutoencoderKL (the Stable Diffusion 2 VAE, and
// the FLUX one with its 16 latent channels and no quant convs): encoding
// images in [-1, 1] to a diagonal Gaussian posterior over latents, decoding
// latents back, and diffusers' tiled encode/decode for large images.
//
// Latent scaling is left to the caller, as in diffusers: the pipeline
// divides latents by Config.ScalingFactor (after adding Config.Shift) before
// Decode, and training multiplies an encoded sample by it (ScaleLatents and
// UnscaleLatents do both).
package vae

import (
	"fmt"
	"path/filepath"

	"github.com/dp2osr/dp2o/torch"
	"github.com/dp2osr/dp2o/torch/nn"
)

// Model is an AutoencoderKL.
type Model struct {
	Config        Config
	Encoder       *Encoder
	Decoder       *Decoder
	QuantConv     *nn.Conv2d // nil when use_quant_conv is false
	PostQuantConv *nn.Conv2d // nil when use_post_quant_conv is false

	// Params owns the weights; Close frees them. Load sets it; a model
	// built with New leaves it to the caller (set it to hand the weights
	// over).
	Params *nn.Params

	// Tiling enables diffusers' tiled encode/decode for inputs larger than
	// one tile.
	Tiling Tiling
	// Slicing encodes and decodes a batch one sample at a time
	// (diffusers' enable_slicing), to bound memory.
	Slicing bool
	// Tap, when set, receives the intermediates of every forward pass
	// (untiled passes only).
	Tap TapFunc
}

// New builds the model, requesting every weight from b under diffusers'
// names, in state-dict order. The caller checks b.Finish().
func New(b *nn.Builder, cfg Config) (m *Model, err error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	defer torch.Recover(&err)
	m = &Model{Config: cfg}
	m.Encoder = newEncoder(b.Sub("encoder"), cfg)
	m.Decoder = newDecoder(b.Sub("decoder"), cfg)
	lat := int64(cfg.LatentChannels)
	if cfg.UseQuantConv {
		m.QuantConv = nn.NewConv2d(b.Sub("quant_conv"), 2*lat, 2*lat, 1, nn.Conv2dConfig{})
	}
	if cfg.UsePostQuantConv {
		m.PostQuantConv = nn.NewConv2d(b.Sub("post_quant_conv"), lat, lat, 1, nn.Conv2dConfig{})
	}
	return m, nil
}

// WeightsFile is the file name of a diffusers model folder's weights.
const WeightsFile = "diffusion_pytorch_model.safetensors"

// Load reads a diffusers VAE folder (config.json and
// diffusion_pytorch_model.safetensors, or its sharded .index.json, or
// diffusion_pytorch_model.bin: see nn.DiffusersWeights), with
// floating-point weights converted to dtype on dev. Checkpoints that still
// name the mid-block attention query/key/value/proj_attn load too.
func Load(dir string, dtype torch.DType, dev torch.Device) (*Model, error) {
	return LoadVariant(dir, "", dtype, dev)
}

// LoadVariant is Load for a weights variant such as "fp16"
// (diffusion_pytorch_model.fp16.safetensors, ...); "" is Load.
func LoadVariant(dir, variant string, dtype torch.DType, dev torch.Device) (*Model, error) {
	cfg, err := LoadConfig(filepath.Join(dir, "config.json"))
	if err != nil {
		return nil, err
	}
	path, err := nn.FindWeights(dir, nn.DiffusersWeights, variant)
	if err != nil {
		return nil, fmt.Errorf("vae: %w", err)
	}
	st, err := nn.OpenWeights(path)
	if err != nil {
		return nil, fmt.Errorf("vae: %w", err)
	}
	src := LegacyAttentionKeys(st)
	defer src.Close()
	m, err := FromSource(src, cfg, dtype, dev)
	if err != nil {
		return nil, fmt.Errorf("vae: %s: %w", path, err)
	}
	return m, nil
}

// FromSource builds the model from the weights of src (a state dict with
// diffusers' names; wrap older checkpoints with LegacyAttentionKeys). Every
// key of src must be used. The returned model owns its weights.
func FromSource(src nn.Source, cfg Config, dtype torch.DType, dev torch.Device) (*Model, error) {
	m, p, err := nn.Build(src, dtype, dev, func(b *nn.Builder) (*Model, error) { return New(b, cfg) })
	if err != nil {
		return nil, err
	}
	m.Params = p
	return m, nil
}

// Close frees the weights the model owns. It is idempotent.
func (m *Model) Close() {
	if m == nil || m.Params == nil {
		return
	}
	m.Params.Close()
	m.Params = nil
}

// Encode maps images (N, in_channels, H, W) in [-1, 1] to the latent
// posterior. With Tiling enabled and H or W larger than a tile, the
// moments are computed tile by tile and blended.
func (m *Model) Encode(x *torch.Tensor) (p *Posterior, err error) {
	defer torch.Recover(&err)
	s := torch.NewScope()
	defer s.Close()
	var moments *torch.Tensor
	sh := x.Shape()
	if len(sh) != 4 || sh[1] != int64(m.Config.InChannels) {
		torch.Errorf("vae.encode", "want images (N, %d, H, W), got %v", m.Config.InChannels, sh)
	}
	tile := int64(m.Tiling.sampleTile(m.Config))
	switch {
	case m.Tiling.Enabled && (sh[2] > tile || sh[3] > tile):
		moments = m.tiledEncode(x)
	case m.Slicing && sh[0] > 1:
		parts := x.Split(1, 0)
		for i, xi := range parts {
			parts[i] = m.encodeMoments(xi, m.Tap)
		}
		moments = torch.Cat(parts, 0)
	default:
		moments = m.encodeMoments(x, m.Tap)
	}
	p = newPosterior(moments)
	s.Keep(p.Mean, p.LogVar, p.Std)
	return p, nil
}

// encodeMoments is encoder + quant_conv on one tile or batch.
func (m *Model) encodeMoments(x *torch.Tensor, tap TapFunc) *torch.Tensor {
	s := torch.NewScope()
	defer s.Close()
	h := m.Encoder.Forward(x, tap)
	if m.QuantConv != nil {
		h = m.QuantConv.Forward(h)
		tap.emit("quant_conv", h)
	}
	return s.Keep(h)
}

// Decode maps latents (N, latent_channels, h, w) (already divided by the
// scaling factor) to images (N, out_channels, h·f, w·f), roughly in
// [-1, 1] and not clamped. With Tiling enabled and h or w larger than a
// latent tile, tiles are decoded separately and blended.
func (m *Model) Decode(z *torch.Tensor) (out *torch.Tensor, err error) {
	defer torch.Recover(&err)
	s := torch.NewScope()
	defer s.Close()
	sh := z.Shape()
	if len(sh) != 4 || sh[1] != int64(m.Config.LatentChannels) {
		torch.Errorf("vae.decode", "want latents (N, %d, h, w), got %v", m.Config.LatentChannels, sh)
	}
	if m.Slicing && sh[0] > 1 {
		parts := z.Split(1, 0)
		for i, zi := range parts {
			parts[i] = m.decodeOne(zi)
		}
		return s.Keep(torch.Cat(parts, 0)), nil
	}
	return s.Keep(m.decodeOne(z)), nil
}

// decodeOne is diffusers' _decode: tiled when enabled and needed.
func (m *Model) decodeOne(z *torch.Tensor) *torch.Tensor {
	tile := int64(m.Tiling.latentTile(m.Config))
	sh := z.Shape()
	if m.Tiling.Enabled && (sh[2] > tile || sh[3] > tile) {
		return m.tiledDecode(z)
	}
	return m.decodeTile(z, m.Tap)
}

// decodeTile is post_quant_conv + decoder on one tile or batch.
func (m *Model) decodeTile(z *torch.Tensor, tap TapFunc) *torch.Tensor {
	s := torch.NewScope()
	defer s.Close()
	h := z
	if m.PostQuantConv != nil {
		h = m.PostQuantConv.Forward(z)
		tap.emit("post_quant_conv", h)
	}
	return s.Keep(m.Decoder.Forward(h, tap))
}

// ScaleLatents maps raw VAE latents to the diffusion model's space:
// (z − shift)·scaling_factor, as training and img2img do after Encode.
func (m *Model) ScaleLatents(z *torch.Tensor) *torch.Tensor {
	if sh := m.Config.Shift(); sh != 0 {
		s := torch.NewScope()
		defer s.Close()
		return s.Keep(z.SubScalar(sh).MulScalar(m.Config.ScalingFactor))
	}
	return z.MulScalar(m.Config.ScalingFactor)
}

// UnscaleLatents is the inverse of ScaleLatents, applied by pipelines
// before Decode: z/scaling_factor + shift.
func (m *Model) UnscaleLatents(z *torch.Tensor) *torch.Tensor {
	if sh := m.Config.Shift(); sh != 0 {
		s := torch.NewScope()
		defer s.Close()
		return s.Keep(z.DivScalar(m.Config.ScalingFactor).AddScalar(sh))
	}
	return z.DivScalar(m.Config.ScalingFactor)
}
