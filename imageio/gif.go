package imageio

import (
	"image"
)

// gifFirstFrame is what PIL needs from a GIF beyond image/gif's decoding:
// the logical screen size and the first frame's colour table as stored
// (image/gif blanks the transparent entry, PIL keeps its colour).
type gifFirstFrame struct {
	screenW, screenH int
	palette          [][3]uint8 // local table if present, else global
	transparent      int        // index, or -1
}

// parseGIFFirstFrame walks the GIF blocks up to the first image descriptor.
// ok is false if the stream is not laid out as expected (the caller then
// keeps image/gif's result).
func parseGIFFirstFrame(data []byte) (g gifFirstFrame, ok bool) {
	g.transparent = -1
	if len(data) < 13 || string(data[:3]) != "GIF" {
		return g, false
	}
	g.screenW = int(data[6]) | int(data[7])<<8
	g.screenH = int(data[8]) | int(data[9])<<8
	flags := data[10]
	p := 13
	table := func(flags byte) ([][3]uint8, bool) {
		n := 1 << (int(flags&7) + 1)
		if p+3*n > len(data) {
			return nil, false
		}
		t := make([][3]uint8, n)
		for i := range t {
			t[i] = [3]uint8{data[p+3*i], data[p+3*i+1], data[p+3*i+2]}
		}
		p += 3 * n
		return t, true
	}
	var global [][3]uint8
	if flags&0x80 != 0 {
		var ok bool
		if global, ok = table(flags); !ok {
			return g, false
		}
	}
	for p < len(data) {
		switch data[p] {
		case 0x21: // extension
			if p+2 > len(data) {
				return g, false
			}
			label := data[p+1]
			p += 2
			if label == 0xf9 && p+5 <= len(data) && data[p] == 4 {
				if data[p+1]&1 != 0 {
					g.transparent = int(data[p+4])
				} else {
					g.transparent = -1
				}
			}
			for { // data sub-blocks
				if p >= len(data) {
					return g, false
				}
				n := int(data[p])
				p += 1 + n
				if n == 0 {
					break
				}
			}
		case 0x2c: // image descriptor
			if p+10 > len(data) {
				return g, false
			}
			f := data[p+9]
			p += 10
			g.palette = global
			if f&0x80 != 0 {
				local, ok := table(f)
				if !ok {
					return g, false
				}
				g.palette = local
			}
			return g, g.palette != nil
		default:
			return g, false
		}
	}
	return g, false
}

// gifToRGB renders the first frame of a GIF as PIL 9.4 shows it after
// convert("RGB"): a screen-sized canvas, filled with the transparent index
// (or index 0) where the frame does not reach, every index looked up in
// the stored colour table.
func gifToRGB(data []byte, img image.Image) (*RGB8, bool) {
	pm, isPal := img.(*image.Paletted)
	g, ok := parseGIFFirstFrame(data)
	if !isPal || !ok || g.screenW <= 0 || g.screenH <= 0 {
		return nil, false
	}
	var lut [256][3]uint8
	copy(lut[:], g.palette)
	fill := 0
	if g.transparent >= 0 {
		fill = g.transparent
	}
	out := NewRGB8(g.screenW, g.screenH)
	for y := 0; y < g.screenH; y++ {
		o := out.Pix[3*g.screenW*y:]
		for x := 0; x < g.screenW; x++ {
			idx := fill
			if (image.Point{X: x, Y: y}).In(pm.Rect) {
				idx = int(pm.Pix[pm.PixOffset(x, y)])
			}
			c := lut[idx]
			o[3*x], o[3*x+1], o[3*x+2] = c[0], c[1], c[2]
		}
	}
	return out, true
}
