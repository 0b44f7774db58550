package imageio

import (
	"image"
	"image/color"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestToImageFromImage(t *testing.T) {
	m := lcgImage(2, 7, 5)
	img := m.ToImage()
	require.Equal(t, image.Rect(0, 0, 7, 5), img.Bounds())
	r, g, b := m.At(3, 2)
	require.Equal(t, color.RGBA{r, g, b, 255}, img.RGBAAt(3, 2))
	require.Equal(t, m, FromImage(img))
	// A sub-image with a non-zero origin.
	sub := img.SubImage(image.Rect(2, 1, 6, 4))
	s := FromImage(sub)
	require.Equal(t, [2]int{4, 3}, [2]int{s.W, s.H})
	r2, g2, b2 := s.At(1, 1)
	r3, g3, b3 := m.At(3, 2)
	require.Equal(t, [3]uint8{r3, g3, b3}, [3]uint8{r2, g2, b2})
	// Alpha is dropped, not composited.
	n := image.NewNRGBA(image.Rect(0, 0, 1, 1))
	n.SetNRGBA(0, 0, color.NRGBA{200, 100, 50, 0})
	require.Equal(t, []uint8{200, 100, 50}, FromImage(n).Pix)
	// CMYK as PIL's cmyk2rgb (values from Pillow 9.4).
	c := image.NewCMYK(image.Rect(0, 0, 4, 1))
	copy(c.Pix, []uint8{10, 20, 30, 40, 200, 100, 50, 128, 255, 255, 255, 255, 0, 0, 0, 0})
	require.Equal(t, []uint8{207, 198, 190, 27, 77, 102, 0, 0, 0, 255, 255, 255}, FromImage(c).Pix)
	// 16-bit gray clips like PIL's "I" → "RGB" (values from Pillow 9.4).
	g16 := image.NewGray16(image.Rect(0, 0, 4, 1))
	for i, v := range []uint16{100, 255, 256, 65535} {
		g16.SetGray16(i, 0, color.Gray16{v})
	}
	require.Equal(t, []uint8{100, 100, 100, 255, 255, 255, 255, 255, 255, 255, 255, 255}, FromImage(g16).Pix)
}
