package tagger

import (
	"fmt"

	"github.com/dp2osr/dp2o/imageio"
	"github.com/dp2osr/dp2o/torch"
)

// ImageNet normalisation of the official transform.
var (
	imageNetMean = []float32{0.485, 0.456, 0.406}
	imageNetStd  = []float32{0.229, 0.224, 0.225}
)

// ToTensor is torchvision's ToTensor on an RGB image: (1, 3, H, W) float32
// in [0, 1], the uint8 CHW copy made contiguous, then divided by 255.
func ToTensor(img *imageio.RGB8) (out *torch.Tensor, err error) {
	if img == nil || img.W <= 0 || img.H <= 0 || len(img.Pix) != 3*img.W*img.H {
		return nil, fmt.Errorf("tagger: not a valid RGB image")
	}
	defer torch.Recover(&err)
	return torch.Scoped(func() *torch.Tensor {
		hwc := torch.FromSlice(img.Pix, int64(img.H), int64(img.W), 3)
		return hwc.Permute([]int64{2, 0, 1}).Contiguous().To(torch.Float32).DivScalar(255).Unsqueeze(0)
	}), nil
}

// Normalize resizes x (B, 3, H, W) in [0, 1] to size×size and normalises
// it, as the official transform does on the tensor: Resize((size, size))
// with bilinear antialiasing (torchvision ≥ 0.17's default on tensors; the
// resize is skipped when the image already has that size, and the aspect
// ratio is not kept), then (x − mean) / std with ImageNet's float32 mean
// and std. antialias=false gives the legacy (torchvision ≤ 0.16) result.
func Normalize(x *torch.Tensor, size int64, antialias bool) (out *torch.Tensor, err error) {
	defer torch.Recover(&err)
	if x.Dim() != 4 || x.Size(1) != 3 {
		return nil, fmt.Errorf("tagger: want (B, 3, H, W) pixels, got %v", x.Shape())
	}
	s := torch.NewScope()
	defer s.Close()
	if x.Size(2) != size || x.Size(3) != size {
		x = x.Contiguous().Interpolate([]int64{size, size}, torch.Bilinear, false, antialias)
	}
	mean := torch.FromSlice(imageNetMean, 3, 1, 1).ToDevice(x.Device())
	std := torch.FromSlice(imageNetStd, 3, 1, 1).ToDevice(x.Device())
	return s.Keep(x.Sub(mean).Div(std)), nil
}

// Preprocess is the official prompt transform of an image already
// converted to RGB (imageio.Load does PIL's convert("RGB")): ToTensor,
// then Normalize with antialiasing, on dev.
func Preprocess(img *imageio.RGB8, size int64, dev torch.Device) (*torch.Tensor, error) {
	x, err := ToTensor(img)
	if err != nil {
		return nil, err
	}
	defer x.Close()
	if dev != torch.CPU {
		var xd *torch.Tensor
		if err := torch.Try(func() { xd = x.ToDevice(dev) }); err != nil {
			return nil, err
		}
		defer xd.Close()
		x = xd
	}
	return Normalize(x, size, true)
}
