package flow

import (
	"context"
	"fmt"
	"image"

	"github.com/dp2osr/dp2o/diffusion"
	"github.com/dp2osr/dp2o/diffusion/colorfix"
	"github.com/dp2osr/dp2o/imageio"
	"github.com/dp2osr/dp2o/torch"
)

// UpscaleOptions are the official script's per-image settings.
type UpscaleOptions struct {
	SampleOptions
	// Prompt is the text prompt. The official script uses RAM/DAPE tags of
	// the input image; until the tagger is ported the caller provides them.
	Prompt      string
	ProcessSize int             // short side to process at, at least (official: 512)
	Upscale     int             // rscale (official: 1)
	AlignMethod colorfix.Method // colour fix (official: adain)
	// PadTo16 pads a processing image whose sides are multiples of 8 but
	// not of 16 (edge replication, right and bottom) instead of failing,
	// and crops the result back. Off by default: the official pipeline
	// cannot process such sizes at all.
	PadTo16 bool
}

// DefaultUpscaleOptions are the official script's defaults.
func DefaultUpscaleOptions() UpscaleOptions {
	return UpscaleOptions{
		SampleOptions: DefaultSampleOptions(),
		ProcessSize:   512,
		Upscale:       1,
		AlignMethod:   colorfix.MethodAdaIN,
	}
}

// ControlTensor is the official script's control image: 8-bit RGB →
// (1, 3, H, W) float32 (value/255)·2 − 1 on the CPU.
func ControlTensor(img *imageio.RGB8) (*torch.Tensor, error) {
	if img == nil {
		return nil, fmt.Errorf("flux: nil image")
	}
	x, err := colorfix.ToTensor(img.Pix, img.W, img.H)
	if err != nil {
		return nil, err
	}
	defer x.Close()
	return torch.Scoped(func() *torch.Tensor { return x.MulScalar(2).SubScalar(1) }), nil
}

// Upscale super-resolves one image as test_flux_controlnet.py does: the
// official resize rules (Pillow bicubic) give the processing image, which
// becomes the control image in [−1, 1]; the pipeline samples at its size;
// the output is colour-fixed against the processing image and resized
// (bicubic) to the input size × Upscale. gen is the official script's
// single generator: pass the same one for every image and sample.
func (p *CFLUX) Upscale(ctx context.Context, img *imageio.RGB8, o UpscaleOptions, gen *torch.Generator) (*imageio.RGB8, error) {
	if err := p.ready(); err != nil {
		return nil, err
	}
	if img == nil || img.W < 1 || img.H < 1 {
		return nil, fmt.Errorf("flux: empty image")
	}
	proc, plan, err := imageio.Prepare(img, o.ProcessSize, o.Upscale)
	if err != nil {
		return nil, err
	}
	m := int(2 * p.VAE.Config.DownsampleFactor())
	pw, ph := proc.W, proc.H
	if o.PadTo16 {
		pw, ph = (pw+m-1)/m*m, (ph+m-1)/m*m
	}
	if err := p.CheckSize(int64(pw), int64(ph)); err != nil {
		return nil, fmt.Errorf("%w (processing size %d×%d from a %d×%d input; PadTo16 / --pad16 pads it)", err, proc.W, proc.H, img.W, img.H)
	}
	control, err := ControlTensor(proc)
	if err != nil {
		return nil, err
	}
	defer func() { control.Close() }() // control is replaced when padded
	if pw != proc.W || ph != proc.H {
		padded := torch.Scoped(func() *torch.Tensor {
			return control.Pad([]int64{0, int64(pw - proc.W), 0, int64(ph - proc.H)}, torch.PadReplicate, 0)
		})
		control.Close()
		control = padded
	}
	out, err := p.Sample(ctx, control, []string{o.Prompt}, o.SampleOptions, gen)
	if err != nil {
		return nil, err
	}
	defer out.Close()
	pix, err := toHWC8(out, proc.W, proc.H)
	if err != nil {
		return nil, err
	}
	fixed, err := colorfix.FixRGB(o.AlignMethod, pix, proc.Pix, proc.W, proc.H)
	if err != nil {
		return nil, err
	}
	return plan.Finish(&imageio.RGB8{W: proc.W, H: proc.H, Pix: fixed}), nil
}

// UpscaleImage is Upscale for any image.Image, returning an *image.RGBA.
func (p *CFLUX) UpscaleImage(ctx context.Context, img image.Image, o UpscaleOptions, gen *torch.Generator) (image.Image, error) {
	out, err := p.Upscale(ctx, imageio.FromImage(img), o, gen)
	if err != nil {
		return nil, err
	}
	return out.ToImage(), nil
}

// toHWC8 crops one (1, 3, H, W) image in [0, 1] to w×h (top left) and
// converts it to 8-bit HWC bytes with diffusers' rounding (the PIL image
// the pipeline returns).
func toHWC8(x *torch.Tensor, w, h int) (pix []uint8, err error) {
	defer torch.Recover(&err)
	s := torch.NewScope()
	defer s.Close()
	c := x.SqueezeDim(0).Narrow(1, 0, int64(h)).Narrow(2, 0, int64(w))
	u8 := diffusion.ToUint8(c.Permute([]int64{1, 2, 0}).Contiguous())
	return torch.ToSlice[uint8](u8), nil
}
