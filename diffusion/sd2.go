package diffusion

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/dp2osr/dp2o/diffusion/clip"
	"github.com/dp2osr/dp2o/diffusion/scheduler"
	"github.com/dp2osr/dp2o/diffusion/unet"
	"github.com/dp2osr/dp2o/diffusion/vae"
	"github.com/dp2osr/dp2o/hub"
	"github.com/dp2osr/dp2o/torch"
)

// SD2 holds the components of the C-SD2 pipeline. The text encoder, UNet
// and ControlNet run in DType (float16 on CUDA as the official
// --mixed_precision fp16, float32 on the CPU); the VAE stays float32.
type SD2 struct {
	Tokenizer   *clip.Tokenizer
	TextEncoder *clip.TextModel
	UNet        *unet.UNet
	ControlNet  *unet.ControlNet
	VAE         *vae.Model
	Scheduler   scheduler.Config

	DType  torch.DType
	Device torch.Device
	// Autocast runs Sample under torch.autocast("cuda") (float16), as the
	// official script wraps the pipeline call whatever --mixed_precision
	// says. It applies on CUDA only.
	Autocast bool
}

// LoadOptions select where and in which precision the models run.
type LoadOptions struct {
	Device torch.Device
	// DType of the text encoder, UNet and ControlNet. Zero value: float16 on
	// CUDA, float32 on the CPU.
	DType torch.DType
	// NoAutocast turns off the float16 autocast region that the official
	// script runs the pipeline in on CUDA.
	NoAutocast bool
	// Variant picks published weight variants ("fp16":
	// diffusion_pytorch_model.fp16.safetensors, model.fp16.safetensors,
	// ...) for the model folders that have them, as diffusers' pipelines;
	// "" loads the regular files.
	Variant string
	// Revision of a base model id: branch, tag or commit ("" for main).
	Revision string
	// ControlNetRevision is the revision of a ControlNet model id.
	ControlNetRevision string
	// Hub resolves model ids and downloads what is missing (nil:
	// hub.FromEnv() without progress bars).
	Hub *hub.Client
}

// LoadSD2 loads a stable-diffusion-2-base folder (diffusers layout:
// tokenizer/, text_encoder/, unet/, vae/, scheduler/) and a C-SD2 or
// DP²O-SD2 ControlNet checkpoint (the released flat model.safetensors). The
// ControlNet is built from the UNet the way ControlNetModel.from_unet does,
// with a config.json beside the checkpoint taking precedence when present,
// then loaded strictly: keys or shapes of another model are an error.
//
// base may also be a model id ("stabilityai/stable-diffusion-2-base") and
// controlnetPath a model id or a file in a repository
// ("org/name/dp2o-sd2/model.safetensors"): see FetchSD2 and
// FetchControlNet, and LoadSD2Context to cancel downloads.
func LoadSD2(base, controlnetPath string, o LoadOptions) (p *SD2, err error) {
	return LoadSD2Context(context.Background(), base, controlnetPath, o)
}

// LoadSD2Context is LoadSD2 with a context for the downloads.
func LoadSD2Context(ctx context.Context, base, controlnetPath string, o LoadOptions) (p *SD2, err error) {
	c := o.Hub
	if c == nil {
		c = hub.FromEnv()
		c.Progress = nil
	}
	if base, err = FetchSD2(ctx, c, base, o.Revision, o.Variant); err != nil {
		return nil, fmt.Errorf("sd2: %w", err)
	}
	if controlnetPath, err = FetchControlNet(ctx, c, controlnetPath, o.ControlNetRevision, o.Variant); err != nil {
		return nil, fmt.Errorf("sd2: controlnet checkpoint: %w", err)
	}
	if o.DType == 0 {
		o.DType = torch.Float32
		if o.Device.IsCUDA() {
			o.DType = torch.Float16
		}
	}
	for _, sub := range []string{"tokenizer", "text_encoder", "unet", "vae", "scheduler"} {
		if st, err := os.Stat(filepath.Join(base, sub)); err != nil || !st.IsDir() {
			return nil, fmt.Errorf("sd2: %s is not a stable-diffusion-2-base folder: missing %s/", base, sub)
		}
	}
	if _, err := os.Stat(controlnetPath); err != nil {
		return nil, fmt.Errorf("sd2: controlnet checkpoint: %w", err)
	}
	p = &SD2{DType: o.DType, Device: o.Device, Autocast: o.Device.IsCUDA() && !o.NoAutocast}
	loaded := p // p is nil once an error is returned
	defer func() {
		if err != nil {
			loaded.Close()
			p = nil
		}
	}()
	if p.Tokenizer, err = clip.LoadTokenizer(filepath.Join(base, "tokenizer")); err != nil {
		return nil, fmt.Errorf("sd2: tokenizer: %w", err)
	}
	if p.TextEncoder, err = clip.LoadTextModelVariant(filepath.Join(base, "text_encoder"), componentVariant(filepath.Join(base, "text_encoder"), o.Variant), o.DType, o.Device); err != nil {
		return nil, fmt.Errorf("sd2: text encoder: %w", err)
	}
	if p.UNet, err = unet.LoadVariant(filepath.Join(base, "unet"), componentVariant(filepath.Join(base, "unet"), o.Variant), o.DType, o.Device); err != nil {
		return nil, fmt.Errorf("sd2: unet: %w", err)
	}
	// A config.json beside the file must agree with the file's own
	// conditioning layout; without one (the released flat files), the
	// layout is read off the file.
	cnConfig := filepath.Join(filepath.Dir(controlnetPath), "config.json")
	var cfg *unet.ControlNetConfig
	if _, statErr := os.Stat(cnConfig); statErr == nil {
		var c unet.ControlNetConfig
		if c, err = unet.LoadControlNetConfig(cnConfig); err == nil {
			cfg = &c
		}
	} else if !errors.Is(statErr, os.ErrNotExist) {
		err = statErr
	}
	if err == nil {
		p.ControlNet, err = unet.LoadControlNetFileFromUNet(p.UNet.Config, cfg, controlnetPath, o.DType, o.Device)
	}
	if err != nil {
		return nil, fmt.Errorf("sd2: controlnet %s: %w", controlnetPath, err)
	}
	if p.VAE, err = vae.LoadVariant(filepath.Join(base, "vae"), componentVariant(filepath.Join(base, "vae"), o.Variant), torch.Float32, o.Device); err != nil {
		return nil, fmt.Errorf("sd2: vae: %w", err)
	}
	if p.Scheduler, err = scheduler.LoadConfig(filepath.Join(base, "scheduler", "scheduler_config.json")); err != nil {
		return nil, fmt.Errorf("sd2: scheduler: %w", err)
	}
	return p, nil
}

// Close frees every model's weights. It is safe on a partly loaded SD2.
func (p *SD2) Close() {
	if p == nil {
		return
	}
	if p.TextEncoder != nil {
		p.TextEncoder.Close()
	}
	if p.UNet != nil {
		p.UNet.Close()
	}
	if p.ControlNet != nil {
		p.ControlNet.Close()
	}
	if p.VAE != nil {
		p.VAE.Close()
	}
}
