package imageio

import "image"

// libwebp's YUV→RGB (src/dsp/yuv.h): 14-bit fixed point with MultHi and
// VP8Clip8.
func webpMultHi(v, coeff int) int { return (v * coeff) >> 8 }

func webpClip8(v int) uint8 {
	const yuvFix2, yuvMask2 = 6, (256 << 6) - 1
	if v&^yuvMask2 == 0 {
		return uint8(v >> yuvFix2)
	}
	if v < 0 {
		return 0
	}
	return 255
}

func webpYUVToRGB(y, u, v int) (r, g, b uint8) {
	yy := webpMultHi(y, 19077)
	r = webpClip8(yy + webpMultHi(v, 26149) - 14234)
	g = webpClip8(yy - webpMultHi(u, 6419) - webpMultHi(v, 13320) + 8708)
	b = webpClip8(yy + webpMultHi(u, 33050) - 17685)
	return
}

// webpToRGB converts the 4:2:0 planes of a lossy WebP, as decoded by
// x/image/webp, to RGB the way libwebp's default decoder (fancy upsampling
// on, the UpsampleRgbLinePair filters of src/dsp/upsampling.c) does.
func webpToRGB(yp []uint8, ystride int, up, vp []uint8, cstride int, w, h int) *RGB8 {
	out := NewRGB8(w, h)
	cw := (w + 1) / 2
	ch := (h + 1) / 2
	// uvAt packs u in the low and v in the high 16 bits, as LOAD_UV does.
	uvAt := func(row, i int) uint32 {
		if i >= cw {
			i = cw - 1
		}
		return uint32(up[row*cstride+i]) | uint32(vp[row*cstride+i])<<16
	}
	put := func(o []uint8, x int, y uint8, uv uint32) {
		o[3*x], o[3*x+1], o[3*x+2] = webpYUVToRGB(int(y), int(uv&0xff), int(uv>>16))
	}
	for y := 0; y < h; y++ {
		// The nearest chroma row gets weight 3/4 ("top" in libwebp's
		// pair), the next nearest 1/4; rows past the plane repeat the edge.
		near := y / 2
		far := near - 1
		if y%2 == 1 {
			far = near + 1
		}
		if far < 0 {
			far = 0
		}
		if far >= ch {
			far = ch - 1
		}
		yrow := yp[y*ystride : y*ystride+w]
		o := out.Pix[3*w*y : 3*w*(y+1)]
		tl := uvAt(near, 0)
		l := uvAt(far, 0)
		put(o, 0, yrow[0], (3*tl+l+0x00020002)>>2)
		last := (w - 1) >> 1
		for x := 1; x <= last; x++ {
			t := uvAt(near, x)
			uv := uvAt(far, x)
			avg := tl + t + l + uv + 0x00080008
			diag12 := (avg + 2*(t+l)) >> 3
			diag03 := (avg + 2*(tl+uv)) >> 3
			put(o, 2*x-1, yrow[2*x-1], (diag12+tl)>>1)
			put(o, 2*x, yrow[2*x], (diag03+t)>>1)
			tl, l = t, uv
		}
		if w&1 == 0 {
			put(o, w-1, yrow[w-1], (3*tl+l+0x00020002)>>2)
		}
	}
	return out
}

// webpImageToRGB handles the image types x/image/webp returns for lossy
// files; ok is false for anything else.
func webpImageToRGB(img image.Image) (*RGB8, bool) {
	switch m := img.(type) {
	case *image.YCbCr:
		if m.SubsampleRatio != image.YCbCrSubsampleRatio420 || m.Rect.Min != (image.Point{}) {
			return nil, false
		}
		return webpToRGB(m.Y, m.YStride, m.Cb, m.Cr, m.CStride, m.Rect.Dx(), m.Rect.Dy()), true
	case *image.NYCbCrA:
		if m.SubsampleRatio != image.YCbCrSubsampleRatio420 || m.Rect.Min != (image.Point{}) {
			return nil, false
		}
		return webpToRGB(m.Y, m.YStride, m.Cb, m.Cr, m.CStride, m.Rect.Dx(), m.Rect.Dy()), true
	}
	return nil, false
}
