package colorfix

import (
	"fmt"

	"github.com/dp2osr/dp2o/torch"
)

// ToTensor is torchvision's ToTensor on 8-bit RGB pixels (HWC, w×h×3
// bytes): a (1, 3, h, w) float32 CPU tensor of value/255.
func ToTensor(pix []uint8, w, h int) (t *torch.Tensor, err error) {
	if w < 1 || h < 1 || len(pix) != w*h*3 {
		return nil, fmt.Errorf("colorfix: %d bytes for a %d×%d RGB image", len(pix), w, h)
	}
	defer torch.Recover(&err)
	s := torch.NewScope()
	defer s.Close()
	x := torch.FromSlice(pix, int64(h), int64(w), 3)
	x = x.Permute([]int64{2, 0, 1}).Contiguous().To(torch.Float32).DivScalar(255)
	return s.Keep(x.Unsqueeze(0)), nil
}

// ToRGB is ToPILImage(x.clamp(0, 1)) for a (1, 3, H, W) or (3, H, W) float
// image: x·255 truncated toward zero (not rounded), as HWC bytes.
func ToRGB(x *torch.Tensor) (pix []uint8, err error) {
	defer torch.Recover(&err)
	s := torch.NewScope()
	defer s.Close()
	if x.Dim() == 4 {
		if x.Size(0) != 1 {
			return nil, fmt.Errorf("colorfix: want one image, got a batch of %d", x.Size(0))
		}
		x = x.SqueezeDim(0)
	}
	if x.Dim() != 3 || x.Size(0) != 3 {
		return nil, fmt.Errorf("colorfix: want a (3, H, W) image, got %v", x.Shape())
	}
	b := x.Clamp(0, 1).MulScalar(255).To(torch.Uint8).Permute([]int64{1, 2, 0}).Contiguous()
	if b.Device() != torch.CPU {
		b = b.ToDevice(torch.CPU)
	}
	return torch.ToSlice[uint8](b), nil
}

// FixRGB is the official adain_color_fix / wavelet_color_fix on 8-bit RGB
// images of w×h pixels (HWC bytes): target (the model's output) gets the
// colours of source (the processing input). MethodNone returns a copy of
// target.
func FixRGB(m Method, target, source []uint8, w, h int) ([]uint8, error) {
	if m == MethodNone {
		if len(target) != w*h*3 {
			return nil, fmt.Errorf("colorfix: %d bytes for a %d×%d RGB image", len(target), w, h)
		}
		return append([]uint8(nil), target...), nil
	}
	s := torch.NewScope()
	defer s.Close()
	tt, err := ToTensor(target, w, h)
	if err != nil {
		return nil, fmt.Errorf("colorfix: target: %w", err)
	}
	st, err := ToTensor(source, w, h)
	if err != nil {
		return nil, fmt.Errorf("colorfix: source: %w", err)
	}
	y, err := Apply(m, tt, st)
	if err != nil {
		return nil, err
	}
	return ToRGB(y)
}
