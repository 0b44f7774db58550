package degrade

import (
	"math"
	"sync"

	"github.com/dp2osr/dp2o/torch"
)

// The constants of BasicSR's diffjpeg.py, as float32 values built once.
type jpegConsts struct {
	yTable, cTable     []float32 // 8×8, the Annex K tables transposed
	rgb2ycc, ycc2rgb   []float32 // 3×3, the matrices as tensordot uses them (already transposed)
	rgb2yccShift       []float32 // [0, 128, 128]
	ycc2rgbShift       []float32 // [0, −128, −128]
	dct, idct          []float32 // 8×8×8×8 cosine bases
	dctScale, idctAlph []float32 // 8×8
}

var (
	jpegOnce sync.Once
	jpegC    jpegConsts
)

func jpegConstants() *jpegConsts {
	jpegOnce.Do(func() {
		y := [8][8]float32{
			{16, 11, 10, 16, 24, 40, 51, 61}, {12, 12, 14, 19, 26, 58, 60, 55}, {14, 13, 16, 24, 40, 57, 69, 56},
			{14, 17, 22, 29, 51, 87, 80, 62}, {18, 22, 37, 56, 68, 109, 103, 77}, {24, 35, 55, 64, 81, 104, 113, 92},
			{49, 64, 78, 87, 103, 121, 120, 101}, {72, 92, 95, 98, 112, 100, 103, 99}}
		c4 := [4][4]float32{{17, 18, 24, 47}, {18, 21, 26, 66}, {24, 26, 56, 99}, {47, 66, 99, 99}}
		c := &jpegC
		c.yTable = make([]float32, 64)
		c.cTable = make([]float32, 64)
		for i := 0; i < 8; i++ {
			for j := 0; j < 8; j++ {
				c.yTable[i*8+j] = y[j][i] // .T
				c.cTable[i*8+j] = 99
				if i < 4 && j < 4 {
					c.cTable[i*8+j] = c4[j][i] // .T
				}
			}
		}
		m1 := [3][3]float32{{0.299, 0.587, 0.114}, {-0.168736, -0.331264, 0.5}, {0.5, -0.418688, -0.081312}}
		m2 := [3][3]float32{{1, 0, 1.402}, {1, -0.344136, -0.714136}, {1, 1.772, 0}}
		c.rgb2ycc = make([]float32, 9)
		c.ycc2rgb = make([]float32, 9)
		for i := 0; i < 3; i++ {
			for j := 0; j < 3; j++ {
				c.rgb2ycc[i*3+j] = m1[j][i]
				c.ycc2rgb[i*3+j] = m2[j][i]
			}
		}
		c.rgb2yccShift = []float32{0, 128, 128}
		c.ycc2rgbShift = []float32{0, -128, -128}
		c.dct = make([]float32, 4096)
		c.idct = make([]float32, 4096)
		for x := 0; x < 8; x++ {
			for yy := 0; yy < 8; yy++ {
				for u := 0; u < 8; u++ {
					for v := 0; v < 8; v++ {
						i := ((x*8+yy)*8+u)*8 + v
						c.dct[i] = float32(math.Cos(float64((2*x+1)*u)*math.Pi/16) * math.Cos(float64((2*yy+1)*v)*math.Pi/16))
						c.idct[i] = float32(math.Cos(float64((2*u+1)*x)*math.Pi/16) * math.Cos(float64((2*v+1)*yy)*math.Pi/16))
					}
				}
			}
		}
		alpha := [8]float64{1 / math.Sqrt(2), 1, 1, 1, 1, 1, 1, 1}
		c.dctScale = make([]float32, 64)
		c.idctAlph = make([]float32, 64)
		for i := 0; i < 8; i++ {
			for j := 0; j < 8; j++ {
				c.dctScale[i*8+j] = float32(alpha[i] * alpha[j] * 0.25)
				c.idctAlph[i*8+j] = float32(alpha[i] * alpha[j])
			}
		}
	})
	return &jpegC
}

func constOn(v []float32, dev torch.Device, shape ...int64) *torch.Tensor {
	t := torch.FromSlice(v, shape...)
	if dev != torch.CPU {
		return t.ToDevice(dev)
	}
	return t
}

// JPEGFactor is diffjpeg's quality_to_factor on a float32 (B,) quality
// tensor, element by element in float32 tensor arithmetic as the reference
// runs it: reciprocal(q)·5000/100 below 50, (200 − 2q)/100 otherwise. A
// quality of 100 gives factor 0 (and DiffJPEG an all-NaN image).
func JPEGFactor(quality *torch.Tensor) *torch.Tensor {
	if quality == nil || quality.Dim() != 1 {
		torch.Errorf("jpeg", "quality must be a (B,) tensor")
	}
	return torch.Scoped(func() *torch.Tensor {
		q := quality.To(torch.Float32)
		parts := make([]*torch.Tensor, q.Size(0))
		for i := range parts {
			qi := q.Select(0, int64(i))
			if qi.Item() < 50 {
				parts[i] = qi.Reciprocal().MulScalar(5000).DivScalar(100)
			} else {
				parts[i] = qi.MulScalar(2).RSub(200).DivScalar(100)
			}
		}
		return torch.Stack(parts, 0)
	})
}

// DiffJPEG is BasicSR's DiffJPEG(differentiable=False) on a (B,3,H,W) float32
// image in [0,1] with one float32 quality per image: zero-pad to multiples of
// 16, RGB→YCbCr, 4:2:0 chroma average, 8×8 DCT as a 64×64 tensordot,
// quantisation by the (transposed) standard tables scaled by the factor and
// torch.round, the inverse path, clamp to [0,255], /255, crop. The stages go
// to tap: factor, ycbcr, y, cb_sub, cr_sub, {y,cb,cr}_coef, {y,cb,cr}_q,
// {y,cb,cr}_decoded, rgb255_unclamped. It panics with a *torch.Error on bad
// input.
func DiffJPEG(x, quality *torch.Tensor, tap Tap) *torch.Tensor {
	checkImage("jpeg", x)
	b := x.Size(0)
	if quality == nil || quality.Dim() != 1 || quality.Size(0) != b {
		torch.Errorf("jpeg", "quality must be a (%d,) tensor, one per image", b)
	}
	c := jpegConstants()
	return torch.Scoped(func() *torch.Tensor {
		dev := x.Device()
		factor := JPEGFactor(quality).ToDevice(dev)
		tap.emit("factor", factor)
		h, w := x.Size(2), x.Size(3)
		hp, wp := (16-h%16)%16, (16-w%16)%16
		xp := x.Pad([]int64{0, wp, 0, hp}, torch.PadConstant, 0)
		H, W := h+hp, w+wp

		// Compression.
		img := xp.MulScalar(255).Permute([]int64{0, 2, 3, 1})
		ycc := img.Tensordot(constOn(c.rgb2ycc, dev, 3, 3), []int64{-1}, []int64{0}).Add(constOn(c.rgb2yccShift, dev, 3)).View(img.Shape())
		tap.emit("ycbcr", ycc)
		img2 := ycc.Permute([]int64{0, 3, 1, 2}).Clone()
		sub := func(ch int64) *torch.Tensor {
			p := torch.AvgPool2d(img2.Select(1, ch).Unsqueeze(1), []int64{2, 2}, []int64{2, 2}, []int64{0, 0})
			return p.Permute([]int64{0, 2, 3, 1}).SqueezeDim(3)
		}
		comps := []struct {
			name   string
			plane  *torch.Tensor
			table  []float32
			height int64
			width  int64
		}{
			{"y", ycc.Select(3, 0), c.yTable, H, W},
			{"cb", sub(1), c.cTable, H / 2, W / 2},
			{"cr", sub(2), c.cTable, H / 2, W / 2},
		}
		tap.emit("y", comps[0].plane)
		tap.emit("cb_sub", comps[1].plane)
		tap.emit("cr_sub", comps[2].plane)
		fv := factor.View([]int64{b, 1, 1, 1})
		dctT := constOn(c.dct, dev, 8, 8, 8, 8)
		idctT := constOn(c.idct, dev, 8, 8, 8, 8)
		scale := constOn(c.dctScale, dev, 8, 8)
		alpha := constOn(c.idctAlph, dev, 8, 8)
		decoded := make([]*torch.Tensor, 3)
		for i, cp := range comps {
			// BlockSplitting.
			blocks := cp.plane.View([]int64{b, cp.height / 8, 8, -1, 8}).Permute([]int64{0, 1, 3, 2, 4}).Contiguous().View([]int64{b, -1, 8, 8})
			// DCT8x8.
			coef := scale.Mul(blocks.SubScalar(128).Tensordot(dctT, []int64{-2, -1}, []int64{0, 1}))
			tap.emit(cp.name+"_coef", coef)
			table := constOn(cp.table, dev, 8, 8).Expand([]int64{b, 1, 8, 8}).Mul(fv)
			q := coef.Div(table).Round()
			tap.emit(cp.name+"_q", q)
			// Decompression: dequantise, iDCT, merge.
			deq := q.Mul(table)
			pix := deq.Mul(alpha).Tensordot(idctT, []int64{-2, -1}, []int64{0, 1}).MulScalar(0.25).AddScalar(128)
			merged := pix.View([]int64{b, cp.height / 8, cp.width / 8, 8, 8}).Permute([]int64{0, 1, 3, 2, 4}).Contiguous().View([]int64{b, cp.height, cp.width})
			tap.emit(cp.name+"_decoded", merged)
			decoded[i] = merged
		}
		up := func(t *torch.Tensor) *torch.Tensor {
			hh, ww := t.Size(1), t.Size(2)
			return t.Unsqueeze(-1).Repeat([]int64{1, 1, 2, 2}).View([]int64{-1, hh * 2, ww * 2})
		}
		ycc2 := torch.Cat([]*torch.Tensor{decoded[0].Unsqueeze(3), up(decoded[1]).Unsqueeze(3), up(decoded[2]).Unsqueeze(3)}, 3)
		rgb := ycc2.Add(constOn(c.ycc2rgbShift, dev, 3)).Tensordot(constOn(c.ycc2rgb, dev, 3, 3), []int64{-1}, []int64{0}).View(ycc2.Shape()).Permute([]int64{0, 3, 1, 2})
		tap.emit("rgb255_unclamped", rgb)
		out := rgb.FullLike(255).Minimum(rgb.ZerosLike().Maximum(rgb)).DivScalar(255)
		return out.Slice(2, 0, h, 1).Slice(3, 0, w, 1)
	})
}
