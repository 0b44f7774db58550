package degrade

import (
	"fmt"
	"strings"

	"github.com/dp2osr/dp2o/torch"
)

// Kernels builds the two filters a record uses, as float32 (k,k) tensors on
// the CPU: kernel1 (zero-padded to Kernel1PaddedSize) and the final sinc
// filter (or pulse). The caller closes them.
func (r *Record) Kernels() (kernel1, sinc *torch.Tensor, err error) {
	k1, n1, err := Kernel(r.Kernel1)
	if err != nil {
		return nil, nil, fmt.Errorf("degrade: kernel1: %w", err)
	}
	if r.Kernel1PaddedSize > n1 {
		k1 = PadKernel(k1, n1, r.Kernel1PaddedSize)
		n1 = r.Kernel1PaddedSize
	}
	ks, ns, err := Kernel(r.SincKernel)
	if err != nil {
		return nil, nil, fmt.Errorf("degrade: sinc_kernel: %w", err)
	}
	return torch.Unscope(KernelTensor(k1, n1)), torch.Unscope(KernelTensor(ks, ns)), nil
}

// Degrade runs the first-order chain of ResShift's degrade_fun on gt, a
// (1,3,H,W) float32 RGB image in [0,1], with the decisions of rec and the
// torch draws from gen (nil: libtorch's default generator), in the
// reference's order: rand → u_level, rand → u_gray, the noise field(s),
// uniform_ → q1, uniform_ → q2. It returns the LR image (1,3,H/sf,W/sf),
// float32 multiples of 1/255, and a copy of rec completed with what was
// drawn and the sizes. Stages and draws go to tap under the reference's
// names (kernel1, sinc_kernel, s1_blur, s1_resize, draw_u_level,
// draw_u_gray, draw_randn_gray, draw_randn_color | draw_poisson_gray,
// draw_poisson_color, s1_noisy, draw_q1, s1_jpeg, draw_q2, f_resize,
// f_sinc, f_jpeg, lq). Bad input is a returned error.
func Degrade(gt *torch.Tensor, rec Record, gen *torch.Generator, tap Tap) (lq *torch.Tensor, out Record, err error) {
	defer torch.Recover(&err)
	if err := rec.Validate(); err != nil {
		return nil, rec, err
	}
	if gt == nil || gt.Closed() {
		return nil, rec, fmt.Errorf("degrade: nil or closed HR tensor")
	}
	if gt.Dim() != 4 || gt.Size(0) != 1 || gt.Size(1) != 3 || gt.DType() != torch.Float32 {
		return nil, rec, fmt.Errorf("degrade: HR must be a (1,3,H,W) float32 tensor, got %v %v", gt.DType(), gt.Shape())
	}
	h, w := gt.Size(2), gt.Size(3)
	sf := int64(rec.SF)
	if h/sf < 1 || w/sf < 1 {
		return nil, rec, fmt.Errorf("degrade: a %dx%d HR image is smaller than the scale factor %d", h, w, sf)
	}
	k1, ks, err := rec.Kernels()
	if err != nil {
		return nil, rec, err
	}
	defer k1.Close()
	defer ks.Close()
	// reflect padding needs k/2 < size at every filtered size.
	if k := k1.Size(0) / 2; k >= h || k >= w {
		return nil, rec, fmt.Errorf("degrade: a %dx%d HR image is too small for the %dx%d blur kernel", h, w, k1.Size(0), k1.Size(0))
	}
	if k := ks.Size(0) / 2; k >= h/sf || k >= w/sf {
		return nil, rec, fmt.Errorf("degrade: a %dx%d LR image (HR %dx%d / %d) is too small for the %dx%d final filter", h/sf, w/sf, h, w, sf, ks.Size(0), ks.Size(0))
	}
	oh, ow := ScaledSize(h, rec.Stage1.Resize.Scale), ScaledSize(w, rec.Stage1.Resize.Scale)
	if oh < 1 || ow < 1 {
		return nil, rec, fmt.Errorf("degrade: stage-1 scale %v makes a %dx%d image empty", rec.Stage1.Resize.Scale, h, w)
	}
	out = rec
	dev := gt.Device()
	tap.emit("kernel1", k1)
	tap.emit("sinc_kernel", ks)
	degenerate := false
	draw := Tap(func(n string, t *torch.Tensor) {
		if strings.HasPrefix(n, "vals_") { // Poisson's level counts are not draws
			tap.emit("poisson_"+n, t)
			return
		}
		tap.emit("draw_"+n, t)
	})

	lq = torch.Scoped(func() *torch.Tensor {
		x := Filter2D(gt, k1)
		tap.emit("s1_blur", x)
		x = ResizeScale(x, rec.Stage1.Resize.Scale, rec.Stage1.Resize.Mode)
		out.Stage1.Resize.OutSize = [2]int64{x.Size(2), x.Size(3)}
		tap.emit("s1_resize", x)

		nz := rec.Stage1.Noise
		d := DrawNoiseLevel(1, nz.Range[0], nz.Range[1], nz.GrayProb, gen, dev)
		defer d.Close()
		tap.emit("draw_u_level", d.ULevel)
		tap.emit("draw_u_gray", d.UGray)
		out.Stage1.Noise.ULevel = float32(d.ULevel.Item())
		out.Stage1.Noise.UGray = float32(d.UGray.Item())
		out.Stage1.Noise.Level = float32(d.Level.Item())
		out.Stage1.Noise.IsGray = float32(d.IsGray.Item())
		if nz.Kind == NoiseGaussian {
			x = AddGaussianNoise(x, d.Level, d.IsGray, gen, draw)
		} else {
			x = AddPoissonNoise(x, d.Level, d.IsGray, gen, draw)
		}
		tap.emit("s1_noisy", x)

		jpeg := func(rng [2]float64, name string) (q, f float32) {
			qt := uniformOn(1, rng[0], rng[1], gen, dev)
			tap.emit("draw_"+name, qt)
			q = float32(qt.Item())
			degenerate = degenerate || q == 100
			x = DiffJPEG(x.Clamp(0, 1), qt, func(n string, t *torch.Tensor) {
				if n == "factor" {
					f = float32(t.Item())
				}
			})
			return q, f
		}
		out.Stage1.JPEGQuality, out.Stage1.JPEGFactor = jpeg(rec.Stage1.JPEGRange, "q1")
		tap.emit("s1_jpeg", x)

		lh, lw := h/sf, w/sf
		out.Final.Size = [2]int64{lh, lw}
		resizeSinc := func() {
			x = ResizeSize(x, lh, lw, rec.Final.Mode)
			tap.emit("f_resize", x)
			x = Filter2D(x, ks)
			tap.emit("f_sinc", x)
		}
		if rec.Final.Order == OrderResizeSincJPEG {
			resizeSinc()
			out.Final.JPEGQuality, out.Final.JPEGFactor = jpeg(rec.Final.JPEGRange, "q2")
			tap.emit("f_jpeg", x)
		} else {
			out.Final.JPEGQuality, out.Final.JPEGFactor = jpeg(rec.Final.JPEGRange, "q2")
			tap.emit("f_jpeg", x)
			resizeSinc()
		}
		x = quantise255(x)
		tap.emit("lq", x)
		return x
	})
	if degenerate {
		lq.Close()
		return nil, out, ErrDegenerateJPEG
	}
	return lq, out, nil
}

// ToUint8 converts an image in [0,1] whose values are multiples of 1/255
// (such as Degrade's output) to uint8 levels: round(x·255).
func ToUint8(x *torch.Tensor) *torch.Tensor {
	return torch.Scoped(func() *torch.Tensor {
		return x.MulScalar(255).Round().Clamp(0, 255).To(torch.Uint8)
	})
}
