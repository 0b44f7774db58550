package flow

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/dp2osr/dp2o/diffusion"
	"github.com/dp2osr/dp2o/diffusion/clip"
	"github.com/dp2osr/dp2o/diffusion/vae"
	"github.com/dp2osr/dp2o/flow/scheduler"
	"github.com/dp2osr/dp2o/flow/t5"
	"github.com/dp2osr/dp2o/flow/transformer"
	"github.com/dp2osr/dp2o/hub"
	"github.com/dp2osr/dp2o/torch"
)

// CFLUX holds the components of the C-FLUX / DP²O-FLUX pipeline. The text
// encoders, transformer and ControlNet run in DType (float16 or bfloat16 on
// CUDA as the official --mixed_precision, float32 on the CPU); the VAE
// stays float32. The text components may be nil when the caller passes
// prompt embeddings (SampleEmbeds).
type CFLUX struct {
	Tokenizer    *clip.Tokenizer
	TextEncoder  *clip.TextModel
	Tokenizer2   *t5.Tokenizer
	TextEncoder2 *t5.Encoder
	Transformer  *transformer.Flux
	ControlNet   *transformer.ControlNet
	VAE          *vae.Model
	Scheduler    scheduler.Config

	DType  torch.DType
	Device torch.Device
	// Autocast runs the call under torch.autocast("cuda") (float16), as the
	// official script does whatever --mixed_precision says. CUDA only.
	Autocast bool
	// MaxSequenceLength is the T5 length (0: DefaultMaxSequenceLength).
	MaxSequenceLength int
}

// LoadOptions select where and in which precision the models run and how
// the ControlNet is built.
type LoadOptions struct {
	Device torch.Device
	// DType of the text encoders, transformer and ControlNet. Zero value:
	// float16 on CUDA (the official --mixed_precision default), float32 on
	// the CPU.
	DType torch.DType
	// NoAutocast turns off the float16 autocast region of the official
	// script on CUDA.
	NoAutocast bool
	// NumDoubleLayers and NumSingleLayers shape the ControlNet built from
	// the transformer (from_transformer's num_layers / num_single_layers;
	// official: 4 and 0) when no config.json sits beside the checkpoint.
	NumDoubleLayers, NumSingleLayers int
	// NoTextEncoders skips tokenizer/, text_encoder/, tokenizer_2/ and
	// text_encoder_2/ (for callers that pass prompt embeddings).
	NoTextEncoders bool
	// Revision of a base model id: branch, tag or commit ("" for main).
	Revision string
	// ControlNetRevision is the revision of a ControlNet model id.
	ControlNetRevision string
	// Hub resolves model ids and downloads what is missing (nil:
	// hub.FromEnv() without progress bars).
	Hub *hub.Client
}

// DefaultLoadOptions are the official script's: a 4-double, 0-single
// ControlNet, on the CPU.
func DefaultLoadOptions() LoadOptions {
	return LoadOptions{Device: torch.CPU, NumDoubleLayers: 4, NumSingleLayers: 0}
}

func isDir(p string) bool {
	st, err := os.Stat(p)
	return err == nil && st.IsDir()
}

// LoadCFLUX loads a FLUX.1-dev folder (diffusers layout: tokenizer/,
// text_encoder/, tokenizer_2/, text_encoder_2/, transformer/, vae/,
// scheduler/) and a C-FLUX or DP²O-FLUX ControlNet checkpoint (the released
// flat model.safetensors). The ControlNet is configured as
// FluxControlNetModel.from_transformer(num_layers, num_single_layers) does,
// or by a config.json beside the checkpoint when there is one, then loaded
// strictly: keys or shapes of another layout are an error.
//
// base may also be a model id ("black-forest-labs/FLUX.1-dev", see
// FetchFLUX) and controlnetPath a model id or a file in a repository
// ("org/name/dp2o-flux/model.safetensors", see diffusion.FetchControlNet);
// LoadCFLUXContext cancels the downloads.
func LoadCFLUX(base, controlnetPath string, o LoadOptions) (p *CFLUX, err error) {
	return LoadCFLUXContext(context.Background(), base, controlnetPath, o)
}

// LoadCFLUXContext is LoadCFLUX with a context for the downloads.
func LoadCFLUXContext(ctx context.Context, base, controlnetPath string, o LoadOptions) (p *CFLUX, err error) {
	c := o.Hub
	if c == nil {
		c = hub.FromEnv()
		c.Progress = nil
	}
	if base, err = FetchFLUX(ctx, c, base, o.Revision); err != nil {
		return nil, fmt.Errorf("flux: %w", err)
	}
	if controlnetPath, err = diffusion.FetchControlNet(ctx, c, controlnetPath, o.ControlNetRevision, ""); err != nil {
		return nil, fmt.Errorf("flux: controlnet checkpoint: %w", err)
	}
	if o.DType == 0 {
		o.DType = torch.Float32
		if o.Device.IsCUDA() {
			o.DType = torch.Float16
		}
	}
	subs := []string{"transformer", "vae", "scheduler"}
	if !o.NoTextEncoders {
		subs = append(subs, "tokenizer", "text_encoder", "tokenizer_2", "text_encoder_2")
	}
	for _, sub := range subs {
		if !isDir(filepath.Join(base, sub)) {
			return nil, fmt.Errorf("flux: %s is not a FLUX.1 folder: missing %s/", base, sub)
		}
	}
	if _, err := os.Stat(controlnetPath); err != nil {
		return nil, fmt.Errorf("flux: controlnet checkpoint: %w", err)
	}
	p = &CFLUX{DType: o.DType, Device: o.Device, Autocast: o.Device.IsCUDA() && !o.NoAutocast}
	// A failed load frees what was loaded (the error returns set p to nil,
	// hence the second handle).
	loaded := p
	defer func() {
		if err != nil {
			loaded.Close()
		}
	}()
	if !o.NoTextEncoders {
		if p.Tokenizer, err = clip.LoadTokenizer(filepath.Join(base, "tokenizer")); err != nil {
			return nil, fmt.Errorf("flux: tokenizer: %w", err)
		}
		if p.TextEncoder, err = clip.LoadTextModel(filepath.Join(base, "text_encoder"), o.DType, o.Device); err != nil {
			return nil, fmt.Errorf("flux: text_encoder: %w", err)
		}
		if p.Tokenizer2, err = t5.LoadTokenizer(filepath.Join(base, "tokenizer_2")); err != nil {
			return nil, fmt.Errorf("flux: tokenizer_2: %w", err)
		}
		if p.TextEncoder2, err = t5.LoadEncoder(filepath.Join(base, "text_encoder_2"), o.DType, o.Device); err != nil {
			return nil, fmt.Errorf("flux: text_encoder_2: %w", err)
		}
	}
	if p.Transformer, err = transformer.LoadFlux(filepath.Join(base, "transformer"), o.DType, o.Device); err != nil {
		return nil, fmt.Errorf("flux: transformer: %w", err)
	}
	if p.ControlNet, err = loadControlNet(p.Transformer.Config, controlnetPath, o); err != nil {
		return nil, fmt.Errorf("flux: controlnet %s: %w", controlnetPath, err)
	}
	if p.VAE, err = vae.Load(filepath.Join(base, "vae"), torch.Float32, o.Device); err != nil {
		return nil, fmt.Errorf("flux: vae: %w", err)
	}
	if p.VAE.Config.LatentChannels*4 != p.Transformer.Config.InChannels {
		return nil, fmt.Errorf("flux: vae has %d latent channels but the transformer takes %d packed channels (want 4×)", p.VAE.Config.LatentChannels, p.Transformer.Config.InChannels)
	}
	if p.Scheduler, err = scheduler.LoadConfig(filepath.Join(base, "scheduler", "scheduler_config.json")); err != nil {
		return nil, fmt.Errorf("flux: scheduler: %w", err)
	}
	return p, nil
}

// loadControlNet builds the ControlNet from a config.json beside the
// checkpoint, else from the transformer's config as from_transformer does.
func loadControlNet(tc transformer.Config, path string, o LoadOptions) (*transformer.ControlNet, error) {
	cfgPath := filepath.Join(filepath.Dir(path), "config.json")
	var cfg transformer.Config
	if _, err := os.Stat(cfgPath); err == nil {
		if cfg, err = transformer.LoadConfig(cfgPath); err != nil {
			return nil, err
		}
	} else if errors.Is(err, os.ErrNotExist) {
		if o.NumDoubleLayers < 1 || o.NumSingleLayers < 0 {
			return nil, fmt.Errorf("num_double_layers must be at least 1 and num_single_layers at least 0, got %d and %d", o.NumDoubleLayers, o.NumSingleLayers)
		}
		cfg = transformer.ControlNetConfigFromTransformer(tc, o.NumDoubleLayers, o.NumSingleLayers)
	} else {
		return nil, err
	}
	return transformer.LoadControlNetFile(path, cfg, o.DType, o.Device)
}

// Close frees every model's weights. It is safe on a partly loaded CFLUX.
func (p *CFLUX) Close() {
	if p == nil {
		return
	}
	if p.TextEncoder != nil {
		p.TextEncoder.Close()
	}
	if p.TextEncoder2 != nil {
		p.TextEncoder2.Close()
	}
	if p.Transformer != nil {
		p.Transformer.Close()
	}
	if p.ControlNet != nil {
		p.ControlNet.Close()
	}
	if p.VAE != nil {
		p.VAE.Close()
	}
}
