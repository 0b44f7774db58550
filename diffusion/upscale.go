package diffusion

import (
	"context"
	"fmt"
	"image"

	"github.com/dp2osr/dp2o/diffusion/colorfix"
	"github.com/dp2osr/dp2o/imageio"
	"github.com/dp2osr/dp2o/torch"
)

// UpscaleOptions are the official script's per-image settings.
type UpscaleOptions struct {
	SampleOptions
	// Prompt is the text prompt. The official script uses RAM/DAPE tags of
	// the input image; until the tagger is ported the caller provides them.
	Prompt         string
	NegativePrompt string
	ProcessSize    int             // short side to process at, at least (official: 512)
	Upscale        int             // rscale (official: 1)
	AlignMethod    colorfix.Method // colour fix (official: adain)
}

// DefaultUpscaleOptions are the official script's defaults.
func DefaultUpscaleOptions() UpscaleOptions {
	return UpscaleOptions{
		SampleOptions:  DefaultSampleOptions(),
		NegativePrompt: DefaultNegativePrompt,
		ProcessSize:    512,
		Upscale:        1,
		AlignMethod:    colorfix.MethodAdaIN,
	}
}

// Upscale super-resolves one image as test_sd2b_controlnet.py does: the
// official resize rules (Pillow bicubic) give the processing image, the
// pipeline samples at its size (the processing image is the ControlNet
// condition), the output is colour-fixed against the processing image and
// resized (bicubic) to the input size × Upscale. gen is used as the official
// script's single generator: pass the same one for every image and sample.
func (p *SD2) Upscale(ctx context.Context, img *imageio.RGB8, o UpscaleOptions, gen *torch.Generator) (*imageio.RGB8, error) {
	if img == nil || img.W < 1 || img.H < 1 {
		return nil, fmt.Errorf("sd2: empty image")
	}
	proc, plan, err := imageio.Prepare(img, o.ProcessSize, o.Upscale)
	if err != nil {
		return nil, err
	}
	control, err := colorfix.ToTensor(proc.Pix, proc.W, proc.H)
	if err != nil {
		return nil, err
	}
	defer control.Close()
	out, err := p.Sample(ctx, control, []string{o.Prompt}, []string{o.NegativePrompt}, o.SampleOptions, gen)
	if err != nil {
		return nil, err
	}
	defer out.Close()
	pix, err := toHWC8(out)
	if err != nil {
		return nil, err
	}
	fixed, err := colorfix.FixRGB(o.AlignMethod, pix, proc.Pix, proc.W, proc.H)
	if err != nil {
		return nil, err
	}
	res := &imageio.RGB8{W: proc.W, H: proc.H, Pix: fixed}
	return imageio.Resize(res, plan.OutW, plan.OutH, imageio.Bicubic), nil
}

// UpscaleImage is Upscale for any image.Image, returning an *image.RGBA.
func (p *SD2) UpscaleImage(ctx context.Context, img image.Image, o UpscaleOptions, gen *torch.Generator) (image.Image, error) {
	out, err := p.Upscale(ctx, imageio.FromImage(img), o, gen)
	if err != nil {
		return nil, err
	}
	return out.ToImage(), nil
}

// toHWC8 converts one (1, 3, H, W) image in [0, 1] to 8-bit HWC bytes with
// diffusers' rounding (the PIL image the pipeline returns).
func toHWC8(x *torch.Tensor) (pix []uint8, err error) {
	defer torch.Recover(&err)
	s := torch.NewScope()
	defer s.Close()
	u8 := ToUint8(x.SqueezeDim(0).Permute([]int64{1, 2, 0}).Contiguous())
	return torch.ToSlice[uint8](u8), nil
}
