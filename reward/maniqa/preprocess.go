package maniqa

import (
	"math"

	"github.com/dp2osr/dp2o/torch"
)

// CropLayout is uniform_crop's geometry for an image.
type CropLayout struct {
	Upscaled    bool
	ScaleFactor float64  // (crop+1)/min(h,w) when upscaled
	Size        [2]int64 // image size after the optional upscale
	Step        [2]int64
	Grid        int64
	Origins     [][2]int64 // (y, x) of each crop, in batch order
}

// Layout is pyiqa's uniform_crop for an h×w image: upscale (bilinear, by
// the scale factor (crop+1)/min(h,w)) when min(h,w) ≤ crop; steps
// (H−crop)//⌊√n⌋; origins (i·step_h, j·step_w) on a ⌈√n⌉² grid, row-major,
// the first n kept.
func (c Config) Layout(h, w int64) CropLayout {
	l := CropLayout{Size: [2]int64{h, w}}
	crop := c.ImgSize
	if min(h, w) <= crop {
		l.Upscaled = true
		l.ScaleFactor = float64(crop+1) / float64(min(h, w))
		l.Size = [2]int64{int64(float64(h) * l.ScaleFactor), int64(float64(w) * l.ScaleFactor)}
	}
	n := int64(math.Sqrt(float64(c.TestSample)))
	l.Step = [2]int64{(l.Size[0] - crop) / n, (l.Size[1] - crop) / n}
	l.Grid = int64(math.Ceil(math.Sqrt(float64(c.TestSample))))
	for i := int64(0); i < l.Grid; i++ {
		for j := int64(0); j < l.Grid; j++ {
			if int64(len(l.Origins)) < c.TestSample {
				l.Origins = append(l.Origins, [2]int64{i * l.Step[0], j * l.Step[1]})
			}
		}
	}
	return l
}

// linearIndex is PyTorch's linear-interpolation source index of every
// output position along one axis for F.interpolate(scale_factor=sf,
// align_corners=False): src = max((dst+0.5)·(1/sf) − 0.5, 0) in float32,
// i0 = min(⌊src⌋, in−1), i1 = i0 + (i0 < in−1), λ = clamp(src − i0, 0, 1).
func linearIndex(in, out int64, sf float64) (i0, i1 []int64, l0, l1 []float32) {
	scale := float32(1.0 / sf)
	for d := int64(0); d < out; d++ {
		src := float32(scale*(float32(d)+0.5)) - 0.5 // explicit rounding: no fused multiply-add
		if src < 0 {
			src = 0
		}
		idx := min(int64(math.Floor(float64(src))), in-1)
		lam := min(max(src-float32(idx), 0), 1)
		next := idx
		if idx < in-1 {
			next = idx + 1
		}
		i0, i1 = append(i0, idx), append(i1, next)
		l0, l1 = append(l0, 1-lam), append(l1, lam)
	}
	return
}

// upscale is F.interpolate(x, scale_factor=sf, mode='bilinear',
// align_corners=False): output ⌊h·sf⌋×⌊w·sf⌋, sampled with the given
// factor (not the size ratio), h-weights outside the w-interpolation as
// PyTorch's CPU kernel nests them.
func upscale(x *torch.Tensor, sf float64, out [2]int64) *torch.Tensor {
	h, w := x.Size(2), x.Size(3)
	dev, dt := x.Device(), x.DType()
	h0, h1, hl0, hl1 := linearIndex(h, out[0], sf)
	w0, w1, wl0, wl1 := linearIndex(w, out[1], sf)
	idx := func(v []int64) *torch.Tensor { return torch.FromSlice(v, int64(len(v))).ToDevice(dev) }
	wt := func(v []float32, shape ...int64) *torch.Tensor {
		return torch.FromSlice(v, shape...).To(dt).ToDevice(dev)
	}
	cols := func(rows *torch.Tensor) *torch.Tensor {
		return rows.IndexSelect(3, idx(w0)).Mul(wt(wl0, 1, 1, 1, out[1])).Add(rows.IndexSelect(3, idx(w1)).Mul(wt(wl1, 1, 1, 1, out[1])))
	}
	top, bottom := cols(x.IndexSelect(2, idx(h0))), cols(x.IndexSelect(2, idx(h1)))
	return top.Mul(wt(hl0, 1, 1, out[0], 1)).Add(bottom.Mul(wt(hl1, 1, 1, out[0], 1)))
}

// crops is uniform_crop's cropping of the (already upscaled) image: the
// (N·n, 3, crop, crop) batch, crops of each image consecutive.
func (c Config) crops(x *torch.Tensor, l CropLayout) *torch.Tensor {
	n := x.Size(0)
	var cs []*torch.Tensor
	for _, o := range l.Origins {
		cs = append(cs, x.Narrow(2, o[0], c.ImgSize).Narrow(3, o[1], c.ImgSize))
	}
	return torch.Stack(cs, 1).Reshape([]int64{n * int64(len(cs)), x.Size(1), c.ImgSize, c.ImgSize})
}
