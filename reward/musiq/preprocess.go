package musiq

import (
	"math"
	"sort"

	"github.com/dp2osr/dp2o/torch"
)

// ScaleInfo describes one scale of the multi-scale patch sequence.
type ScaleInfo struct {
	ScaleID   int
	ResizedHW [2]int64 // image size at this scale
	GridHW    [2]int64 // patches per column and row
	Valid     int64    // patches extracted
	PaddedTo  int64    // sequence length of the scale (-1: all patches, no padding)
}

// resizedSize is resize_preserve_aspect_ratio's target: the longer side
// becomes l, both sides rounded with Python's round (half to even) in double
// precision.
func resizedSize(h, w, l int64) (int64, int64) {
	ratio := float64(l) / float64(max(h, w))
	return int64(math.RoundToEven(float64(h) * ratio)), int64(math.RoundToEven(float64(w) * ratio))
}

// Layout returns the scales of the token sequence for an h×w image.
func (c Config) Layout(h, w int64) []ScaleInfo {
	sides := append([]int64(nil), c.LongerSideLengths...)
	sort.Slice(sides, func(i, j int) bool { return sides[i] < sides[j] })
	var out []ScaleInfo
	add := func(id int, rh, rw, maxLen int64) {
		gh, gw := ceilDiv(rh, c.PatchStride), ceilDiv(rw, c.PatchStride)
		out = append(out, ScaleInfo{ScaleID: id, ResizedHW: [2]int64{rh, rw}, GridHW: [2]int64{gh, gw}, Valid: gh * gw, PaddedTo: maxLen})
	}
	for i, l := range sides {
		rh, rw := resizedSize(h, w, l)
		n := ceilDiv(l, c.PatchStride)
		add(i, rh, rw, n*n)
	}
	if c.UseOriginalRes {
		add(len(sides), h, w, c.MaxSeqLenFromOriginalRes)
	}
	return out
}

// SeqLen is the number of tokens (without cls) of an h×w image.
func (c Config) SeqLen(h, w int64) int64 {
	var n int64
	for _, s := range c.Layout(h, w) {
		if s.PaddedTo >= 0 {
			n += s.PaddedTo
		} else {
			n += s.Valid
		}
	}
	return n
}

// validTokens lists the positions of the non-padding tokens in the
// sequence of an h×w image (without cls), ascending.
func (c Config) validTokens(h, w int64) []int64 {
	var idx []int64
	var off int64
	for _, s := range c.Layout(h, w) {
		n, slots := s.Valid, s.Valid
		if s.PaddedTo >= 0 {
			n, slots = min(s.Valid, s.PaddedTo), s.PaddedTo
		}
		for i := range n {
			idx = append(idx, off+i)
		}
		off += slots
	}
	return idx
}

func ceilDiv(a, b int64) int64 { return (a + b - 1) / b }

// samePad is TensorFlow's "SAME" padding of a size-n dimension for a
// kernel k and stride s: (before, after), the extra one after.
func samePad(n, k, s int64) (int64, int64) {
	out := ceilDiv(n, s)
	p := max((out-1)*s+k-n, 0)
	return p / 2, p - p/2
}

// patchesOf is _extract_patches_and_positions_from_image: x (N,C,H,W) →
// (N, C·P·P+3, L) rows of patch pixels, hashed spatial position, scale id
// and mask 1, padded with zero columns or cut to maxLen when maxLen ≥ 0.
func (c Config) patchesOf(x *torch.Tensor, scaleID int, maxLen int64) *torch.Tensor {
	n, ch, h, w := x.Size(0), x.Size(1), x.Size(2), x.Size(3)
	p := c.PatchSize
	t, b := samePad(h, p, c.PatchStride)
	l, r := samePad(w, p, c.PatchStride)
	x = x.Pad([]int64{l, r, t, b}, torch.PadConstant, 0)
	gh, gw := ceilDiv(h, c.PatchStride), ceilDiv(w, c.PatchStride)
	// F.unfold with kernel = stride = P is a reshape: (C, P, P) per patch,
	// patches in row-major order.
	patches := x.Reshape([]int64{n, ch, gh, p, gw, p}).Permute([]int64{0, 1, 3, 5, 2, 4}).Reshape([]int64{n, ch * p * p, gh * gw})
	pos := c.hashedPositions(gh, gw, x.Device()).Unsqueeze(0).Unsqueeze(0).Expand([]int64{n, 1, gh * gw}).To(patches.DType())
	scale := torch.Full([]int64{n, 1, gh * gw}, float64(scaleID), patches.DType(), x.Device())
	mask := torch.Ones([]int64{n, 1, gh * gw}, patches.DType(), x.Device())
	out := torch.Cat([]*torch.Tensor{patches, pos, scale, mask}, 1)
	if maxLen >= 0 {
		pad := torch.Zeros([]int64{n, out.Size(1), maxLen}, out.DType(), out.Device())
		out = torch.Cat([]*torch.Tensor{out, pad}, -1).Narrow(-1, 0, maxLen)
	}
	return out
}

// hashedPositions is get_hashed_spatial_pos_emb_index: (gh·gw) float32
// positions ph[i]·G + pw[j], with ph, pw = legacy nearest interpolation of
// arange(G) to gh and gw.
func (c Config) hashedPositions(gh, gw int64, dev torch.Device) *torch.Tensor {
	g := c.HashGridSize
	grid := torch.Arange(0, float64(g), 1, torch.Float32, dev).View([]int64{1, 1, 1, g})
	pw := grid.Interpolate([]int64{1, gw}, torch.Nearest, false, false).View([]int64{1, gw}).Repeat([]int64{gh, 1})
	ph := grid.Interpolate([]int64{1, gh}, torch.Nearest, false, false).View([]int64{gh, 1}).Repeat([]int64{1, gw})
	return ph.MulScalar(float64(g)).Add(pw).Reshape([]int64{-1})
}

// Patches is get_multiscale_patches on x (N,3,H,W) in [-1, 1]: the token
// sequence (N, L, C·P·P+3) of every scale (resized with bicubic
// interpolation, no antialias) and, when configured, the original
// resolution.
func (c Config) Patches(x *torch.Tensor) *torch.Tensor {
	h, w := x.Size(2), x.Size(3)
	var outs []*torch.Tensor
	for _, s := range c.Layout(h, w) {
		img := x
		if s.ScaleID < len(c.LongerSideLengths) { // not the original resolution
			img = x.Interpolate(s.ResizedHW[:], torch.Bicubic, false, false)
		}
		outs = append(outs, c.patchesOf(img, s.ScaleID, s.PaddedTo))
	}
	return torch.Cat(outs, -1).Transpose(1, 2)
}
