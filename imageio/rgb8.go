package imageio

import (
	"fmt"
	"image"
	"image/color"
)

// RGB8 is an 8-bit RGB image: W×H pixels, rows top to bottom, each pixel
// three bytes R, G, B (HWC, the layout of numpy.array of a PIL "RGB" image).
type RGB8 struct {
	W, H int
	Pix  []uint8 // len 3*W*H
}

// NewRGB8 returns a black w×h image. It panics if w or h is negative or the
// pixel count overflows.
func NewRGB8(w, h int) *RGB8 {
	if w < 0 || h < 0 {
		panic(fmt.Sprintf("imageio: NewRGB8: negative size %dx%d", w, h))
	}
	n, ok := mulInts(w, h, 3)
	if !ok {
		panic(fmt.Sprintf("imageio: NewRGB8: size %dx%d overflows", w, h))
	}
	return &RGB8{W: w, H: h, Pix: make([]uint8, n)}
}

// Clone returns a deep copy of m.
func (m *RGB8) Clone() *RGB8 {
	c := &RGB8{W: m.W, H: m.H, Pix: make([]uint8, len(m.Pix))}
	copy(c.Pix, m.Pix)
	return c
}

// At returns the pixel at column x, row y.
func (m *RGB8) At(x, y int) (r, g, b uint8) {
	i := 3 * (y*m.W + x)
	return m.Pix[i], m.Pix[i+1], m.Pix[i+2]
}

// Set sets the pixel at column x, row y.
func (m *RGB8) Set(x, y int, r, g, b uint8) {
	i := 3 * (y*m.W + x)
	m.Pix[i], m.Pix[i+1], m.Pix[i+2] = r, g, b
}

// ToImage converts m to an opaque *image.RGBA with bounds (0,0)-(W,H).
func (m *RGB8) ToImage() *image.RGBA {
	out := image.NewRGBA(image.Rect(0, 0, m.W, m.H))
	for i, j := 0, 0; i < len(m.Pix); i, j = i+3, j+4 {
		out.Pix[j] = m.Pix[i]
		out.Pix[j+1] = m.Pix[i+1]
		out.Pix[j+2] = m.Pix[i+2]
		out.Pix[j+3] = 0xff
	}
	return out
}

// FromImage converts any image.Image to RGB8 the way PIL's convert("RGB")
// treats the corresponding PIL mode: alpha is dropped, not composited
// (colour values of non-premultiplied images are kept as stored); 16-bit
// colour channels keep their high byte; 16-bit grayscale (PIL modes "I" and
// "I;16") is clipped to 255; grayscale is replicated; paletted images are
// expanded through their palette; CMYK uses PIL's cmyk2rgb formula.
// YCbCr images are converted with libjpeg's tables and nearest-neighbour
// chroma (use [Decode] for JPEG files to get libjpeg's fancy upsampling).
func FromImage(src image.Image) *RGB8 {
	b := src.Bounds()
	w, h := b.Dx(), b.Dy()
	out := NewRGB8(w, h)
	p := out.Pix
	// rows calls f with each output row and the source row it comes from.
	rows := func(pix []uint8, offset func(x, y int) int, f func(o, row []uint8)) {
		for y := 0; y < h; y++ {
			f(p[3*w*y:], pix[offset(b.Min.X, b.Min.Y+y):])
		}
	}
	// packed keeps the first three channels of pixels of bpp bytes whose
	// channels are ch bytes apart (the high byte first for 16 bits).
	packed := func(bpp, ch int) func(o, row []uint8) {
		return func(o, row []uint8) {
			for x := 0; x < w; x++ {
				o[3*x], o[3*x+1], o[3*x+2] = row[bpp*x], row[bpp*x+ch], row[bpp*x+2*ch]
			}
		}
	}
	switch s := src.(type) {
	case *image.RGBA: // opaque or premultiplied; PIL "RGBA"/"RGBa" → raw bytes
		rows(s.Pix, s.PixOffset, packed(4, 1))
	case *image.NRGBA:
		rows(s.Pix, s.PixOffset, packed(4, 1))
	case *image.RGBA64:
		rows(s.Pix, s.PixOffset, packed(8, 2))
	case *image.NRGBA64:
		rows(s.Pix, s.PixOffset, packed(8, 2))
	case *image.Gray:
		rows(s.Pix, s.PixOffset, func(o, row []uint8) {
			for x := 0; x < w; x++ {
				v := row[x]
				o[3*x], o[3*x+1], o[3*x+2] = v, v, v
			}
		})
	case *image.Gray16:
		// PIL opens 16-bit grayscale as "I" / "I;16"; convert("RGB")
		// clips the value to 0..255 (it does not scale).
		rows(s.Pix, s.PixOffset, func(o, row []uint8) {
			for x := 0; x < w; x++ {
				v16 := uint16(row[2*x])<<8 | uint16(row[2*x+1])
				v := uint8(255)
				if v16 < 255 {
					v = uint8(v16)
				}
				o[3*x], o[3*x+1], o[3*x+2] = v, v, v
			}
		})
	case *image.Paletted:
		var lut [256][3]uint8
		for i, c := range s.Palette {
			lut[i] = rgbOfColor(c)
		}
		rows(s.Pix, s.PixOffset, func(o, row []uint8) {
			for x := 0; x < w; x++ {
				c := lut[row[x]]
				o[3*x], o[3*x+1], o[3*x+2] = c[0], c[1], c[2]
			}
		})
	case *image.CMYK:
		rows(s.Pix, s.PixOffset, func(o, row []uint8) {
			for x := 0; x < w; x++ {
				o[3*x], o[3*x+1], o[3*x+2] = cmykToRGB(row[4*x], row[4*x+1], row[4*x+2], row[4*x+3])
			}
		})
	case *image.YCbCr:
		ycbcrToRGB(p, s, b)
	case *image.NYCbCrA:
		ycbcrToRGB(p, &s.YCbCr, b)
	default:
		for y := 0; y < h; y++ {
			o := p[3*w*y:]
			for x := 0; x < w; x++ {
				c := rgbOfColor(src.At(b.Min.X+x, b.Min.Y+y))
				o[3*x], o[3*x+1], o[3*x+2] = c[0], c[1], c[2]
			}
		}
	}
	return out
}

// ycbcrToRGB converts the b part of s with libjpeg's tables and
// nearest-neighbour chroma into p (HWC, b's size).
func ycbcrToRGB(p []uint8, s *image.YCbCr, b image.Rectangle) {
	w := b.Dx()
	for y := 0; y < b.Dy(); y++ {
		o := p[3*w*y:]
		for x := 0; x < w; x++ {
			yi := s.YOffset(b.Min.X+x, b.Min.Y+y)
			ci := s.COffset(b.Min.X+x, b.Min.Y+y)
			o[3*x], o[3*x+1], o[3*x+2] = jpegYCCToRGB(s.Y[yi], s.Cb[ci], s.Cr[ci])
		}
	}
}

// rgbOfColor returns the stored (non-premultiplied where the colour type is)
// RGB of one colour, alpha dropped.
func rgbOfColor(c color.Color) [3]uint8 {
	switch v := c.(type) {
	case color.NRGBA:
		return [3]uint8{v.R, v.G, v.B}
	case color.RGBA:
		return [3]uint8{v.R, v.G, v.B}
	case color.NRGBA64:
		return [3]uint8{uint8(v.R >> 8), uint8(v.G >> 8), uint8(v.B >> 8)}
	case color.RGBA64:
		return [3]uint8{uint8(v.R >> 8), uint8(v.G >> 8), uint8(v.B >> 8)}
	case color.Gray:
		return [3]uint8{v.Y, v.Y, v.Y}
	case color.Gray16:
		g := uint8(255)
		if v.Y < 255 {
			g = uint8(v.Y)
		}
		return [3]uint8{g, g, g}
	case color.CMYK:
		r, g, b := cmykToRGB(v.C, v.M, v.Y, v.K)
		return [3]uint8{r, g, b}
	case nil:
		return [3]uint8{}
	}
	n := color.NRGBAModel.Convert(c).(color.NRGBA)
	return [3]uint8{n.R, n.G, n.B}
}

// cmykToRGB is Pillow's cmyk2rgb (Convert.c): nk = 255-k,
// out = nk - nk*c/255 with libImaging's MULDIV255 rounding.
func cmykToRGB(c, m, y, k uint8) (r, g, b uint8) {
	nk := 255 - int(k)
	f := func(v uint8) uint8 {
		t := int(v)*nk + 128
		q := ((t >> 8) + t) >> 8
		return clampU8(nk - q)
	}
	return f(c), f(m), f(y)
}

func clampU8(v int) uint8 {
	if v < 0 {
		return 0
	}
	if v > 255 {
		return 255
	}
	return uint8(v)
}

// mulInts multiplies non-negative ints, reporting false on overflow.
func mulInts(vs ...int) (int, bool) {
	const maxInt = int(^uint(0) >> 1)
	p := 1
	for _, v := range vs {
		if v < 0 {
			return 0, false
		}
		if v != 0 && p > maxInt/v {
			return 0, false
		}
		p *= v
	}
	return p, true
}
