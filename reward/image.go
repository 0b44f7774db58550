package reward

import (
	"errors"
	"fmt"
	"image"

	"github.com/dp2osr/dp2o/imageio"
	"github.com/dp2osr/dp2o/torch"
)

// ImageToTensor converts an image to a (1,3,H,W) float32 tensor in [0,1]
// on the CPU, as pyiqa's imread2tensor(img, rgb=True) does: PIL's
// convert('RGB') (grayscale replicated, alpha dropped, 16-bit grayscale
// clipped to 255, 16-bit colour reduced to its high byte; see
// imageio.FromImage), then torchvision's to_tensor (uint8 / 255 in
// float32).
func ImageToTensor(img image.Image) (*torch.Tensor, error) {
	if img == nil {
		return nil, errors.New("reward: nil image")
	}
	return RGB8ToTensor(imageio.FromImage(img))
}

// RGB8ToTensor converts 8-bit RGB pixels to a (1,3,H,W) float32 tensor in
// [0,1] on the CPU (to_tensor: uint8 / 255 in float32).
func RGB8ToTensor(m *imageio.RGB8) (t *torch.Tensor, err error) {
	if m == nil || m.W < 1 || m.H < 1 {
		return nil, errors.New("reward: empty image")
	}
	if len(m.Pix) != 3*m.W*m.H {
		return nil, fmt.Errorf("reward: %dx%d image with %d bytes of pixels", m.W, m.H, len(m.Pix))
	}
	err = torch.Try(func() {
		s := torch.NewScope()
		defer s.Close()
		hwc := torch.FromSlice(m.Pix, int64(m.H), int64(m.W), 3)
		t = s.Keep(hwc.Permute([]int64{2, 0, 1}).Contiguous().To(torch.Float32).DivScalar(255).Unsqueeze(0))
	})
	return t, err
}

// LoadImage reads an image file as pyiqa does (imageio.Load: PIL's
// Image.open(path).convert('RGB')) into a (1,3,H,W) float32 tensor in [0,1].
func LoadImage(path string) (*torch.Tensor, error) {
	m, err := imageio.Load(path)
	if err != nil {
		return nil, fmt.Errorf("reward: %w", err)
	}
	return RGB8ToTensor(m)
}
