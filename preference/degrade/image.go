package degrade

import (
	"fmt"

	"github.com/dp2osr/dp2o/imageio"
	"github.com/dp2osr/dp2o/torch"
)

// ToRGB8 converts a (1,3,H,W) image in [0,1] to 8-bit RGB pixels:
// round(x·255), clamped (exact for Degrade's output, whose values are
// multiples of 1/255).
func ToRGB8(x *torch.Tensor) (m *imageio.RGB8, err error) {
	if x == nil || x.Closed() || x.Dim() != 4 || x.Size(0) != 1 || x.Size(1) != 3 {
		return nil, fmt.Errorf("degrade: ToRGB8: want a (1,3,H,W) image")
	}
	err = torch.Try(func() {
		s := torch.NewScope()
		defer s.Close()
		hwc := ToUint8(x).Squeeze().Permute([]int64{1, 2, 0}).Contiguous().ToDevice(torch.CPU)
		m = &imageio.RGB8{W: int(x.Size(3)), H: int(x.Size(2)), Pix: hwc.Bytes()}
	})
	return m, err
}
