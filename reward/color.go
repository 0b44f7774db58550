package reward

import (
	"fmt"

	"github.com/dp2osr/dp2o/torch"
)

// ColorSpace selects the luma of pyiqa's to_y_channel.
type ColorSpace string

// The colour spaces of pyiqa's to_y_channel this package ports.
const (
	// YIQ is pyiqa's default: Y = 0.299 R + 0.587 G + 0.114 B.
	YIQ ColorSpace = "yiq"
	// YCbCr is ITU-R BT.601 as BasicSR/MATLAB:
	// Y = (65.481 R + 128.553 G + 24.966 B + 16) / 255.
	YCbCr ColorSpace = "ycbcr"
)

// yChannel is pyiqa's to_y_channel(x, outRange, space): the luma (N,1,H,W)
// of RGB x (N,3,H,W) in [0,1], times outRange, rounded when outRange ≥ 255;
// in x's dtype, with pyiqa's op order (a matmul over the channel axis).
func yChannel(x *torch.Tensor, outRange float64, space ColorSpace) *torch.Tensor {
	var y *torch.Tensor
	nhwc := x.Permute([]int64{0, 2, 3, 1})
	switch space {
	case YIQ, "":
		// rgb2yiq: x @ W.T, W's rows Y, I, Q.
		w := torch.FromSlice([]float32{
			0.299, 0.587, 0.114,
			0.5959, -0.2746, -0.3213,
			0.2115, -0.5227, 0.3112,
		}, 3, 3).Transpose(0, 1).To(x.DType()).ToDevice(x.Device())
		y = nhwc.Matmul(w).Permute([]int64{0, 3, 1, 2})
	case YCbCr:
		// rgb2ycbcr: (x @ W + bias) / 255.
		w := torch.FromSlice([]float32{
			65.481, -37.797, 112.0,
			128.553, -74.203, -93.786,
			24.966, 112.0, -18.214,
		}, 3, 3).To(x.DType()).ToDevice(x.Device())
		b := torch.FromSlice([]int64{16, 128, 128}, 1, 3, 1, 1).To(x.DType()).ToDevice(x.Device())
		y = nhwc.Matmul(w).Permute([]int64{0, 3, 1, 2}).Add(b).DivScalar(255)
	default:
		torch.Errorf("to_y_channel", "unknown colour space %q (want yiq or ycbcr)", space)
	}
	y = y.Narrow(1, 0, 1).MulScalar(outRange)
	if outRange >= 255 {
		y = y.Round()
	}
	return y
}

// ParseColorSpace accepts "yiq" and "ycbcr".
func ParseColorSpace(s string) (ColorSpace, error) {
	switch ColorSpace(s) {
	case YIQ, YCbCr:
		return ColorSpace(s), nil
	}
	return "", fmt.Errorf("reward: unknown colour space %q (want yiq or ycbcr)", s)
}
