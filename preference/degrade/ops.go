package degrade

import (
	"fmt"
	"math"

	"github.com/dp2osr/dp2o/torch"
)

// Resize modes of the degradation (F.interpolate's mode names).
const (
	ModeArea     = "area"
	ModeBilinear = "bilinear"
	ModeBicubic  = "bicubic"
)

// ResizeModes is the list random.choice picks a resize mode from.
var ResizeModes = []string{ModeArea, ModeBilinear, ModeBicubic}

func checkImage(op string, x *torch.Tensor) {
	if x == nil || x.Closed() {
		torch.Errorf(op, "nil or closed image tensor")
	}
	if x.Dim() != 4 || x.Size(1) != 3 {
		torch.Errorf(op, "expected a (B,3,H,W) image, got shape %v", x.Shape())
	}
	if x.DType() != torch.Float32 {
		torch.Errorf(op, "expected a float32 image, got %v", x.DType())
	}
}

// Filter2D is BasicSR's filter2D for one (k, k) kernel shared by every image
// and channel: reflect padding by k/2 (mirror without repeating the edge),
// then a depthwise cross-correlation (conv2d with groups b·c). k must be odd
// and k/2 smaller than H and W. It panics with a *torch.Error on bad input.
func Filter2D(x, kernel *torch.Tensor) *torch.Tensor {
	checkImage("filter2d", x)
	if kernel.Dim() != 2 || kernel.Size(0) != kernel.Size(1) || kernel.Size(0)%2 != 1 {
		torch.Errorf("filter2d", "expected an odd square (k,k) kernel, got shape %v", kernel.Shape())
	}
	k := kernel.Size(0)
	b, c, h, w := x.Size(0), x.Size(1), x.Size(2), x.Size(3)
	if k/2 >= h || k/2 >= w {
		torch.Errorf("filter2d", "a %dx%d kernel needs an image larger than %dx%d for reflect padding, got %dx%d", k, k, k/2, k/2, h, w)
	}
	return torch.Scoped(func() *torch.Tensor {
		p := k / 2
		xp := x.Pad([]int64{p, p, p, p}, torch.PadReflect, 0)
		ph, pw := xp.Size(2), xp.Size(3)
		kf := kernel.To(x.DType()).ToDevice(x.Device())
		if b == 1 {
			// degrade_fun's path: a (k,k) kernel repeated for the c channels, groups = c.
			xv := xp.View([]int64{1, c, ph, pw})
			kw := kf.View([]int64{1, 1, k, k}).Repeat([]int64{1, c, 1, 1}).View([]int64{c, 1, k, k})
			return torch.Conv2d(xv, kw, nil, []int64{1, 1}, []int64{0, 0}, []int64{1, 1}, c).View([]int64{b, c, h, w})
		}
		// filter2D's shared-kernel path for a batch: every plane through one (1,1,k,k) kernel.
		xv := xp.View([]int64{b * c, 1, ph, pw})
		kw := kf.View([]int64{1, 1, k, k})
		return torch.Conv2d(xv, kw, nil, []int64{1, 1}, []int64{0, 0}, []int64{1, 1}, 1).View([]int64{b, c, h, w})
	})
}

// ScaledSize is F.interpolate's output size for scale_factor=s:
// floor(in·s), computed in float64.
func ScaledSize(in int64, s float64) int64 { return int64(math.Floor(float64(in) * s)) }

// ResizeScale is F.interpolate(x, scale_factor=s, mode=mode) as torch 1.13
// runs it: area is adaptive_avg_pool2d to floor(in·s); bilinear and bicubic
// (align_corners=False, no antialias) pass s itself to the kernel, so the
// source coordinate is (d+0.5)/s−0.5. It panics with a *torch.Error on bad
// input.
func ResizeScale(x *torch.Tensor, s float64, mode string) *torch.Tensor {
	checkImage("resize", x)
	if !(s > 0) || math.IsInf(s, 0) {
		torch.Errorf("resize", "scale factor %v must be positive and finite", s)
	}
	oh, ow := ScaledSize(x.Size(2), s), ScaledSize(x.Size(3), s)
	if oh < 1 || ow < 1 {
		torch.Errorf("resize", "scale factor %v makes a %dx%d image empty", s, x.Size(2), x.Size(3))
	}
	size := []int64{oh, ow}
	switch mode {
	case ModeArea:
		return torch.AdaptiveAvgPool2d(x, size)
	case ModeBilinear:
		return x.UpsampleBilinear2dScales(size, false, s, s)
	case ModeBicubic:
		return x.UpsampleBicubic2dScales(size, false, s, s)
	}
	torch.Errorf("resize", "unknown mode %q (want area, bilinear or bicubic)", mode)
	return nil
}

// ResizeSize is F.interpolate(x, size=(h, w), mode=mode): area is
// adaptive_avg_pool2d, bilinear and bicubic use the scale in/out of the
// sizes (align_corners=False, no antialias).
func ResizeSize(x *torch.Tensor, h, w int64, mode string) *torch.Tensor {
	checkImage("resize", x)
	if h < 1 || w < 1 {
		torch.Errorf("resize", "output size %dx%d must be positive", h, w)
	}
	size := []int64{h, w}
	switch mode {
	case ModeArea:
		return torch.AdaptiveAvgPool2d(x, size)
	case ModeBilinear:
		return x.Interpolate(size, torch.Bilinear, false, false)
	case ModeBicubic:
		return x.Interpolate(size, torch.Bicubic, false, false)
	}
	torch.Errorf("resize", "unknown mode %q (want area, bilinear or bicubic)", mode)
	return nil
}

func validMode(m string) error {
	for _, v := range ResizeModes {
		if m == v {
			return nil
		}
	}
	return fmt.Errorf("unknown resize mode %q (want area, bilinear or bicubic)", m)
}
