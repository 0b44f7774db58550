package degrade

import (
	"fmt"

	"github.com/dp2osr/dp2o/torch"
)

// Crop cuts the square HR training crop of side GTSize from hr, a
// (1,3,H,W) float32 image, as BasicSR's RealESRGANDataset does with a
// fixed crop_pad_size (rescale_gt off): an image smaller than GTSize is
// first padded at the bottom and right by reflection without repeating the
// edge (cv2's BORDER_REFLECT_101, repeated while needed), then the top-left
// corner is drawn uniformly from gen (top, then left). With GTSize 0 it
// returns hr itself (a new handle). The caller closes the result.
func (c Config) Crop(hr *torch.Tensor, gen *torch.Generator) (out *torch.Tensor, err error) {
	defer torch.Recover(&err)
	if hr == nil || hr.Closed() {
		return nil, fmt.Errorf("degrade: crop: nil or closed image")
	}
	if hr.Dim() != 4 || hr.Size(0) != 1 || hr.Size(1) != 3 {
		return nil, fmt.Errorf("degrade: crop: expected a (1,3,H,W) image, got %v", hr.Shape())
	}
	if c.GTSize <= 0 {
		return torch.Unscope(hr.Alias()), nil
	}
	size := int64(c.GTSize)
	return torch.Unscope(torch.Scoped(func() *torch.Tensor {
		x := hr
		for x.Size(2) < size || x.Size(3) < size {
			h, w := x.Size(2), x.Size(3)
			ph, pw := min(max(0, size-h), h-1), min(max(0, size-w), w-1)
			if (ph == 0 && h < size) || (pw == 0 && w < size) {
				torch.Errorf("crop", "a %dx%d image cannot be reflect-padded to %d", h, w, size)
			}
			x = x.Pad([]int64{0, pw, 0, ph}, torch.PadReflect, 0)
		}
		d := drawer{gen}
		h, w := x.Size(2), x.Size(3)
		top := int64(d.choice(int(h - size + 1)))
		left := int64(d.choice(int(w - size + 1)))
		return x.Slice(2, top, top+size, 1).Slice(3, left, left+size, 1).Contiguous()
	})), nil
}
