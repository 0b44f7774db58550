package reward

import (
	"context"
	"fmt"
	"math"

	"github.com/dp2osr/dp2o/torch"
)

// SSIM is pyiqa's SSIM (Wang et al. 2004, MATLAB conventions): the images
// are scaled to 0..255 and rounded (the Y channel, or each RGB channel),
// then in float64 an 11×11 Gaussian window (σ 1.5, valid convolution),
// C1 = (0.01·255)², C2 = (0.03·255)², the contrast-structure term clamped
// at 0, and the mean of the SSIM map. Images smaller than the window are
// refused.
type SSIM struct {
	name string
	Opts FidelityOptions
}

// NewSSIM returns an SSIM scorer reporting name.
func NewSSIM(name string, o FidelityOptions) *SSIM { return &SSIM{name: name, Opts: o} }

// Name is the metric name.
func (s *SSIM) Name() string { return s.name }

// FullReference is true.
func (s *SSIM) FullReference() bool { return true }

// HigherIsBetter is true.
func (s *SSIM) HigherIsBetter() bool { return true }

// Close does nothing: SSIM has no weights.
func (s *SSIM) Close() error { return nil }

const (
	ssimWin   = 11
	ssimSigma = 1.5
	ssimRange = 255.0
)

// Score returns the SSIM of each image of img against ref.
func (s *SSIM) Score(ctx context.Context, img, ref *torch.Tensor) (scores []float64, err error) {
	if err := CheckInputs(ctx, s, img, ref); err != nil {
		return nil, err
	}
	h, w := img.Size(2)-int64(2*max(s.Opts.CropBorder, 0)), img.Size(3)-int64(2*max(s.Opts.CropBorder, 0))
	if h < ssimWin || w < ssimWin {
		return nil, fmt.Errorf("%s: a %dx%d image is smaller than the %dx%d window", s.name, w, h, ssimWin, ssimWin)
	}
	err = torch.Try(func() {
		torch.NoGrad(func() {
			sc := torch.NewScope()
			defer sc.Close()
			x, y, e := cropPair(img, ref, s.Opts.CropBorder)
			if e != nil {
				torch.Errorf("ssim", "%v", e)
			}
			x = s.preprocess(x)
			y = s.preprocess(y)
			scores = ssim(x, y).ToDevice(torch.CPU).Float64s()
		})
	})
	if err != nil {
		return nil, fmt.Errorf("%s: %w", s.name, err)
	}
	return scores, nil
}

// preprocess is pyiqa's preprocess_rgb(x, test_y_channel, 255, space)
// followed by .to(float64).
func (s *SSIM) preprocess(x *torch.Tensor) *torch.Tensor {
	if s.Opts.YChannel {
		x = yChannel(x, ssimRange, s.Opts.ColorSpace)
	} else {
		x = x.MulScalar(ssimRange)
	}
	return x.Round().To(torch.Float64)
}

// ssim is pyiqa's ssim() with downsample=False on float64 images.
func ssim(x, y *torch.Tensor) *torch.Tensor {
	c := x.Size(1)
	win := gaussianWindow(ssimWin, ssimSigma).To(torch.Float64).ToDevice(x.Device()).Repeat([]int64{c, 1, 1, 1})
	filter := func(t *torch.Tensor) *torch.Tensor {
		return torch.Conv2d(t, win, nil, []int64{1, 1}, []int64{0, 0}, []int64{1, 1}, c)
	}
	c1 := math.Pow(0.01*ssimRange, 2)
	c2 := math.Pow(0.03*ssimRange, 2)
	mu1, mu2 := filter(x), filter(y)
	mu1sq, mu2sq := mu1.Pow(2), mu2.Pow(2)
	mu12 := mu1.Mul(mu2)
	s1 := filter(x.Mul(x)).Sub(mu1sq)
	s2 := filter(y.Mul(y)).Sub(mu2sq)
	s12 := filter(x.Mul(y)).Sub(mu12)
	cs := s12.MulScalar(2).AddScalar(c2).Div(s1.Add(s2).AddScalar(c2)).Relu()
	m := mu12.MulScalar(2).AddScalar(c1).Div(mu1sq.Add(mu2sq).AddScalar(c1)).Mul(cs)
	return m.MeanDims([]int64{1, 2, 3}, false)
}

// gaussianWindow is pyiqa's fspecial(size, sigma) (MATLAB's): computed in
// float64, values below eps·max zeroed, normalised to sum 1, then cast to
// float32 — a (1,1,size,size) tensor.
func gaussianWindow(size int, sigma float64) *torch.Tensor {
	h := make([]float64, size*size)
	m := float64(size-1) / 2
	hmax := 0.0
	for i := range size {
		for j := range size {
			y, x := float64(i)-m, float64(j)-m
			v := math.Exp(-(x*x + y*y) / (2 * sigma * sigma))
			h[i*size+j] = v
			hmax = max(hmax, v)
		}
	}
	eps := math.Nextafter(1, 2) - 1
	for i, v := range h {
		if v < eps*hmax {
			h[i] = 0
		}
	}
	sum := pairwiseSum(h)
	out := make([]float32, len(h))
	for i, v := range h {
		if sum != 0 {
			v /= sum
		}
		out[i] = float32(v)
	}
	return torch.FromSlice(out, 1, 1, int64(size), int64(size))
}

// pairwiseSum adds like numpy's pairwise summation of a contiguous array:
// a plain loop below 8 values, eight accumulators up to 128, halves
// (multiples of 8) beyond.
func pairwiseSum(v []float64) float64 {
	n := len(v)
	if n < 8 {
		s := 0.0
		for _, x := range v {
			s += x
		}
		return s
	}
	if n <= 128 {
		var r [8]float64
		copy(r[:], v[:8])
		i := 8
		for ; i+8 <= n; i += 8 {
			for k := range 8 {
				r[k] += v[i+k]
			}
		}
		s := ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]))
		for ; i < n; i++ {
			s += v[i]
		}
		return s
	}
	half := n / 2
	half -= half % 8
	return pairwiseSum(v[:half]) + pairwiseSum(v[half:])
}
