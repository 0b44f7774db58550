package imageio

import "image"

// libjpeg(-turbo)'s YCbCr→RGB tables (jdcolor.c build_ycc_rgb_table):
// SCALEBITS = 16 fixed point with FIX(x) = round(x·2¹⁶).
var jpegCrR, jpegCbB, jpegCrG, jpegCbG [256]int32

func init() {
	const (
		scaleBits = 16
		oneHalf   = 1 << (scaleBits - 1)
		fix1402   = 91881  // FIX(1.40200)
		fix1772   = 116130 // FIX(1.77200)
		fix071414 = 46802  // FIX(0.71414)
		fix034414 = 22554  // FIX(0.34414)
	)
	for i := int32(0); i < 256; i++ {
		x := i - 128
		jpegCrR[i] = (fix1402*x + oneHalf) >> scaleBits
		jpegCbB[i] = (fix1772*x + oneHalf) >> scaleBits
		jpegCrG[i] = -fix071414 * x
		jpegCbG[i] = -fix034414*x + oneHalf
	}
}

// jpegYCCToRGB converts one pixel with libjpeg's ycc_rgb_convert.
func jpegYCCToRGB(y, cb, cr uint8) (r, g, b uint8) {
	yy := int(y)
	r = clampU8(yy + int(jpegCrR[cr]))
	g = clampU8(yy + int((jpegCbG[cb]+jpegCrG[cr])>>16))
	b = clampU8(yy + int(jpegCbB[cb]))
	return
}

// jpegToRGB converts a YCbCr image decoded by image/jpeg (chroma planes at
// their stored resolution) to RGB as libjpeg-turbo does with its defaults
// (do_fancy_upsampling = TRUE): chroma is upsampled with the "fancy"
// triangle filters of jdsample.c (h2v1, h2v2, h1v2) and converted with
// libjpeg's tables. Ratios libjpeg upsamples by replication (4:1:1, 4:1:0,
// or planes 2 samples wide or less) are replicated. ok is false for
// layouts this function does not handle (the caller falls back).
func jpegToRGB(m *image.YCbCr) (out *RGB8, ok bool) {
	if m.Rect.Min != (image.Point{}) {
		return nil, false
	}
	w, h := m.Rect.Dx(), m.Rect.Dy()
	var hs, vs int // horizontal and vertical subsampling factors
	switch m.SubsampleRatio {
	case image.YCbCrSubsampleRatio444:
		hs, vs = 1, 1
	case image.YCbCrSubsampleRatio422:
		hs, vs = 2, 1
	case image.YCbCrSubsampleRatio420:
		hs, vs = 2, 2
	case image.YCbCrSubsampleRatio440:
		hs, vs = 1, 2
	case image.YCbCrSubsampleRatio411:
		hs, vs = 4, 1
	case image.YCbCrSubsampleRatio410:
		hs, vs = 4, 2
	default:
		return nil, false
	}
	// libjpeg's downsampled_width/height: ceil(size·samp/max_samp).
	cw := (w + hs - 1) / hs
	ch := (h + vs - 1) / vs
	cb := upsampleChroma(m.Cb, m.CStride, cw, ch, w, h, hs, vs)
	cr := upsampleChroma(m.Cr, m.CStride, cw, ch, w, h, hs, vs)
	out = NewRGB8(w, h)
	for y := 0; y < h; y++ {
		yrow := m.Y[y*m.YStride : y*m.YStride+w]
		o := out.Pix[3*w*y : 3*w*(y+1)]
		c0 := cb[y*w : (y+1)*w]
		c1 := cr[y*w : (y+1)*w]
		for x := 0; x < w; x++ {
			o[3*x], o[3*x+1], o[3*x+2] = jpegYCCToRGB(yrow[x], c0[x], c1[x])
		}
	}
	return out, true
}

// upsampleChroma returns a w×h plane from the cw×ch chroma plane src (row
// stride stride), following libjpeg-turbo's jdsample.c method choice.
// Context rows beyond the top and bottom of the plane are copies of the
// edge rows, as libjpeg's main controller provides them.
func upsampleChroma(src []uint8, stride, cw, ch, w, h, hs, vs int) []uint8 {
	out := make([]uint8, w*h)
	at := func(x, y int) int {
		if y < 0 {
			y = 0
		} else if y >= ch {
			y = ch - 1
		}
		if x < 0 {
			x = 0
		} else if x >= cw {
			x = cw - 1
		}
		return int(src[y*stride+x])
	}
	switch {
	case hs == 1 && vs == 1:
		for y := 0; y < h; y++ {
			copy(out[y*w:(y+1)*w], src[y*stride:y*stride+w])
		}
	case hs == 2 && vs == 1 && cw > 2: // h2v1_fancy_upsample
		for y := 0; y < h; y++ {
			o := out[y*w : (y+1)*w]
			for i := 0; i < cw; i++ {
				c := 3 * at(i, y)
				if x := 2 * i; x < w {
					o[x] = uint8((c + at(i-1, y) + 1) >> 2)
				}
				if x := 2*i + 1; x < w {
					o[x] = uint8((c + at(i+1, y) + 2) >> 2)
				}
			}
		}
	case hs == 2 && vs == 2 && cw > 2: // h2v2_fancy_upsample
		sums := make([]int, cw)
		for y := 0; y < h; y++ {
			near := y / 2
			far := near - 1 // even output rows lean on the row above
			if y%2 == 1 {
				far = near + 1
			}
			for i := range sums {
				sums[i] = 3*at(i, near) + at(i, far)
			}
			sum := func(i int) int {
				if i < 0 {
					i = 0
				} else if i >= cw {
					i = cw - 1
				}
				return sums[i]
			}
			o := out[y*w : (y+1)*w]
			for i := 0; i < cw; i++ {
				c := 3 * sums[i]
				if x := 2 * i; x < w {
					o[x] = uint8((c + sum(i-1) + 8) >> 4)
				}
				if x := 2*i + 1; x < w {
					o[x] = uint8((c + sum(i+1) + 7) >> 4)
				}
			}
		}
	case hs == 1 && vs == 2: // h1v2_fancy_upsample
		for y := 0; y < h; y++ {
			near := y / 2
			far, bias := near-1, 1
			if y%2 == 1 {
				far, bias = near+1, 2
			}
			o := out[y*w : (y+1)*w]
			for x := 0; x < w; x++ {
				o[x] = uint8((3*at(x, near) + at(x, far) + bias) >> 2)
			}
		}
	default: // int_upsample / h2v1_upsample / h2v2_upsample: replication
		for y := 0; y < h; y++ {
			o := out[y*w : (y+1)*w]
			for x := 0; x < w; x++ {
				o[x] = uint8(at(x/hs, y/vs))
			}
		}
	}
	return out
}
