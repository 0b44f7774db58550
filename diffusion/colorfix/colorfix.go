// Package colorfix is the colour alignment DP²O-SR applies to its outputs
// (utils_self/wavelet_color_fix.py, from StableSR): AdaIN matches the
// per-channel mean and standard deviation of the output to the input's;
// the wavelet fix keeps the output's high frequencies and takes the low
// frequencies from the input.
//
// The tensor functions work on float images (N, C, H, W) in [0, 1] on any
// device and panic with a *torch.Error on bad input. FixRGB reproduces the
// official image path on 8-bit RGB pixels: ToTensor (value/255), the fix,
// clamp to [0, 1] and ToPILImage, which truncates x·255 toward zero rather
// than rounding.
package colorfix

import (
	"fmt"

	"github.com/dp2osr/dp2o/torch"
)

// Method selects a colour alignment, named as the official --align_method.
type Method string

// The methods of the official scripts.
const (
	MethodAdaIN   Method = "adain"
	MethodWavelet Method = "wavelet"
	MethodNone    Method = "nofix"
)

// ParseMethod checks an --align_method value.
func ParseMethod(s string) (Method, error) {
	switch m := Method(s); m {
	case MethodAdaIN, MethodWavelet, MethodNone:
		return m, nil
	}
	return "", fmt.Errorf("colorfix: unknown method %q (want adain, wavelet or nofix)", s)
}

// Apply aligns target's colours to source's with method m, returning the
// float result before the final clamp (target itself, as a new handle, for
// MethodNone).
func Apply(m Method, target, source *torch.Tensor) (out *torch.Tensor, err error) {
	defer torch.Recover(&err)
	switch m {
	case MethodAdaIN:
		return AdaIN(target, source), nil
	case MethodWavelet:
		return Wavelet(target, source), nil
	case MethodNone:
		return target.Alias(), nil
	}
	return nil, fmt.Errorf("colorfix: unknown method %q", m)
}

// MeanStdEps is calc_mean_std's epsilon, added to the variance.
const MeanStdEps = 1e-5

// MeanStd is calc_mean_std: per sample and channel, the mean over H·W and
// sqrt(unbiased variance + eps), both shaped (N, C, 1, 1).
func MeanStd(feat *torch.Tensor, eps float64) (mean, std *torch.Tensor) {
	s := torch.NewScope()
	defer s.Close()
	sh := feat.Shape()
	if len(sh) != 4 {
		torch.Errorf("colorfix", "want a (N, C, H, W) tensor, got %v", sh)
	}
	flat := feat.View([]int64{sh[0], sh[1], -1})
	std = flat.Var([]int64{2}, true, false).AddScalar(eps).Sqrt().View([]int64{sh[0], sh[1], 1, 1})
	mean = flat.MeanDims([]int64{2}, false).View([]int64{sh[0], sh[1], 1, 1})
	s.Keep(mean, std)
	return mean, std
}

// AdaIN is adaptive_instance_normalization(target, source): target
// normalised per channel, then given source's mean and standard deviation.
// The images may differ in size.
func AdaIN(target, source *torch.Tensor) *torch.Tensor {
	s := torch.NewScope()
	defer s.Close()
	sMean, sStd := MeanStd(source, MeanStdEps)
	tMean, tStd := MeanStd(target, MeanStdEps)
	size := target.Shape()
	norm := target.Sub(tMean.Expand(size)).Div(tStd.Expand(size))
	return s.Keep(norm.Mul(sStd.Expand(size)).Add(sMean.Expand(size)))
}

// WaveletLevels is the number of levels of the official decomposition.
const WaveletLevels = 5

// WaveletBlur is wavelet_blur: replicate-pad by radius, then a depthwise
// 3×3 convolution with [[1,2,1],[2,4,2],[1,2,1]]/16 at dilation radius.
func WaveletBlur(img *torch.Tensor, radius int64) *torch.Tensor {
	s := torch.NewScope()
	defer s.Close()
	c := img.Size(1)
	k := torch.FromSlice([]float32{
		0.0625, 0.125, 0.0625,
		0.125, 0.25, 0.125,
		0.0625, 0.125, 0.0625,
	}, 1, 1, 3, 3).To(img.DType())
	if dev := img.Device(); dev != torch.CPU {
		k = k.ToDevice(dev)
	}
	k = k.Repeat([]int64{c, 1, 1, 1})
	p := img.Pad([]int64{radius, radius, radius, radius}, torch.PadReplicate, 0)
	return s.Keep(torch.Conv2d(p, k, nil, []int64{1, 1}, []int64{0, 0}, []int64{radius, radius}, c))
}

// WaveletDecomposition is wavelet_decomposition: for radius 1, 2, 4, …
// (levels of them) high += img − blur(img); img = blur(img). It returns the
// summed high frequencies and the last blur.
func WaveletDecomposition(img *torch.Tensor, levels int) (high, low *torch.Tensor) {
	if levels < 1 {
		torch.Errorf("colorfix", "%d wavelet levels", levels)
	}
	s := torch.NewScope()
	defer s.Close()
	high = img.ZerosLike()
	for i := range levels {
		low = WaveletBlur(img, int64(1)<<i)
		high = high.Add(img.Sub(low))
		img = low
	}
	s.Keep(high, low)
	return high, low
}

// Wavelet is wavelet_reconstruction(target, source): target's high
// frequencies plus source's low frequencies. The images must have the same
// shape.
func Wavelet(target, source *torch.Tensor) *torch.Tensor {
	if a, b := target.Shape(), source.Shape(); fmt.Sprint(a) != fmt.Sprint(b) {
		torch.Errorf("colorfix", "wavelet fix needs images of one size, got %v and %v", a, b)
	}
	s := torch.NewScope()
	defer s.Close()
	high, _ := WaveletDecomposition(target, WaveletLevels)
	_, low := WaveletDecomposition(source, WaveletLevels)
	return s.Keep(high.Add(low))
}
