package reward

import (
	"context"
	"fmt"
	"math"

	"github.com/dp2osr/dp2o/torch"
)

// FidelityOptions configure PSNR and SSIM.
type FidelityOptions struct {
	// YChannel computes the metric on the luma only (pyiqa's
	// test_y_channel).
	YChannel bool
	// ColorSpace is the luma's colour space (pyiqa's color_space, default
	// YIQ).
	ColorSpace ColorSpace
	// CropBorder removes this many pixels from each side first (pyiqa's
	// crop_border).
	CropBorder int
}

// The fidelity metrics registered under pyiqa's names: "psnr" (RGB),
// "psnry" (Y of YIQ), "ssim" (Y of YIQ, as pyiqa's default), "ssimc"
// (RGB). They need no weights.
func init() {
	Register("psnr", func(OpenOptions) (Scorer, error) { return NewPSNR("psnr", FidelityOptions{}), nil })
	Register("psnry", func(OpenOptions) (Scorer, error) {
		return NewPSNR("psnry", FidelityOptions{YChannel: true}), nil
	})
	Register("ssim", func(OpenOptions) (Scorer, error) { return NewSSIM("ssim", FidelityOptions{YChannel: true}), nil })
	Register("ssimc", func(OpenOptions) (Scorer, error) { return NewSSIM("ssimc", FidelityOptions{}), nil })
}

// PSNR is pyiqa's psnr: 10·log10(1 / (mean((x−y)²) + 1e-8)) per image, on
// [0,1] data (data_range 1), in float32 like pyiqa.
type PSNR struct {
	name string
	Opts FidelityOptions
}

// NewPSNR returns a PSNR scorer reporting name.
func NewPSNR(name string, o FidelityOptions) *PSNR { return &PSNR{name: name, Opts: o} }

// Name is the metric name.
func (p *PSNR) Name() string { return p.name }

// FullReference is true.
func (p *PSNR) FullReference() bool { return true }

// HigherIsBetter is true.
func (p *PSNR) HigherIsBetter() bool { return true }

// Close does nothing: PSNR has no weights.
func (p *PSNR) Close() error { return nil }

// psnrEps is pyiqa's psnr eps.
const psnrEps = 1e-8

// Score returns the PSNR (dB) of each image of img against ref.
func (p *PSNR) Score(ctx context.Context, img, ref *torch.Tensor) (scores []float64, err error) {
	if err := CheckInputs(ctx, p, img, ref); err != nil {
		return nil, err
	}
	var mse []float32
	err = torch.Try(func() {
		torch.NoGrad(func() {
			s := torch.NewScope()
			defer s.Close()
			x, y, e := cropPair(img, ref, p.Opts.CropBorder)
			if e != nil {
				torch.Errorf("psnr", "%v", e)
			}
			if p.Opts.YChannel {
				x, y = yChannel(x, 1, p.Opts.ColorSpace), yChannel(y, 1, p.Opts.ColorSpace)
			}
			mse = x.Sub(y).Pow(2).MeanDims([]int64{1, 2, 3}, false).To(torch.Float32).ToDevice(torch.CPU).Float32s()
		})
	})
	if err != nil {
		return nil, fmt.Errorf("%s: %w", p.name, err)
	}
	scores = make([]float64, len(mse))
	for i, m := range mse {
		// 10 * log10(data_range**2 / (mse + eps)), each step in float32.
		d := m + float32(psnrEps)
		r := 1 / d
		scores[i] = float64(10 * float32(math.Log10(float64(r))))
	}
	return scores, nil
}

// cropPair removes c pixels from every side of both images.
func cropPair(x, y *torch.Tensor, c int) (*torch.Tensor, *torch.Tensor, error) {
	if c <= 0 {
		return x, y, nil
	}
	h, w := x.Size(2), x.Size(3)
	if int64(2*c) >= h || int64(2*c) >= w {
		return nil, nil, fmt.Errorf("crop border %d leaves nothing of a %dx%d image", c, w, h)
	}
	cb := int64(c)
	crop := func(t *torch.Tensor) *torch.Tensor {
		return t.Narrow(2, cb, h-2*cb).Narrow(3, cb, w-2*cb)
	}
	return crop(x), crop(y), nil
}
