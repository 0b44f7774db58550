package degrade

import (
	"math"

	"github.com/dp2osr/dp2o/torch"
)

// Tap receives named intermediate tensors of a computation (noise draws,
// JPEG stages, chain stages). The tensor is only valid during the call:
// clone it to keep it. A nil Tap is allowed everywhere.
type Tap func(name string, t *torch.Tensor)

func (tap Tap) emit(name string, t *torch.Tensor) {
	if tap != nil {
		tap(name, t)
	}
}

// perImage checks that v is a float32 (B,) tensor for a (B,3,H,W) image and
// returns it viewed as (B,1,1,1).
func perImage(op, what string, v *torch.Tensor, b int64) *torch.Tensor {
	if v == nil || v.Dim() != 1 || v.Size(0) != b {
		shape := []int64(nil)
		if v != nil {
			shape = v.Shape()
		}
		torch.Errorf(op, "%s must be a (%d,) tensor, one value per image, got shape %v", what, b, shape)
	}
	return v.View([]int64{b, 1, 1, 1})
}

// GaussianNoise is BasicSR's generate_gaussian_noise_pt: sigma and gray are
// float32 (B,) tensors (gray 0 or 1). When any gray is set it first draws
// one (H,W) field from gen (shared by the batch, scaled per image), then it
// always draws the (B,3,H,W) colour field; both are ·σ/255, and an image
// with gray = 1 takes the grey field on every channel. The raw draws go to
// tap as "randn_gray" and "randn_color".
func GaussianNoise(x, sigma, gray *torch.Tensor, gen *torch.Generator, tap Tap) *torch.Tensor {
	checkImage("gaussian_noise", x)
	return torch.Scoped(func() *torch.Tensor {
		b, h, w := x.Size(0), x.Size(2), x.Size(3)
		sg := perImage("gaussian_noise", "sigma", sigma, b).To(x.DType()).ToDevice(x.Device())
		gr := perImage("gaussian_noise", "gray", gray, b).To(x.DType()).ToDevice(x.Device())
		calGray := gr.Sum().Item() > 0
		var noiseGray *torch.Tensor
		if calGray {
			r := torch.RandnFor([]int64{h, w}, gen, x.DType(), x.Device())
			tap.emit("randn_gray", r)
			noiseGray = r.Mul(sg).DivScalar(255).View([]int64{b, 1, h, w})
		}
		r := torch.RandnFor(x.Shape(), gen, x.DType(), x.Device())
		tap.emit("randn_color", r)
		noise := r.Mul(sg).DivScalar(255)
		if calGray {
			noise = noise.Mul(gr.RSub(1)).Add(noiseGray.Mul(gr))
		}
		return noise
	})
}

// AddGaussianNoise is add_gaussian_noise_pt with clip=True, rounds=False:
// clamp(x + GaussianNoise(x, sigma, gray), 0, 1).
func AddGaussianNoise(x, sigma, gray *torch.Tensor, gen *torch.Generator, tap Tap) *torch.Tensor {
	return torch.Scoped(func() *torch.Tensor {
		return x.Add(GaussianNoise(x, sigma, gray, gen, tap)).Clamp(0, 1)
	})
}

// quantise255 is clamp(round(x·255), 0, 255)/255 in x's dtype.
func quantise255(x *torch.Tensor) *torch.Tensor {
	return x.MulScalar(255).Round().Clamp(0, 255).DivScalar(255)
}

// poissonVals is 2^ceil(log2(#unique)) for every image of x, as a float32
// (B,1,1,1) tensor on x's device (numpy's float64 power of two, exact).
func poissonVals(x *torch.Tensor) *torch.Tensor {
	b := x.Size(0)
	vals := make([]float32, b)
	for i := int64(0); i < b; i++ {
		n := func() int64 {
			s := torch.NewScope()
			defer s.Close()
			return x.Select(0, i).UniqueCount()
		}()
		vals[i] = float32(math.Pow(2, math.Ceil(math.Log2(float64(n)))))
	}
	v := torch.FromSlice(vals, b, 1, 1, 1)
	if x.Device() != torch.CPU {
		return v.ToDevice(x.Device())
	}
	return v
}

// rgbToGray is torchvision's rgb_to_grayscale (one output channel):
// 0.2989·R + 0.587·G + 0.114·B in x's dtype, left to right.
func rgbToGray(x *torch.Tensor) *torch.Tensor {
	r, g, bl := x.Select(1, 0), x.Select(1, 1), x.Select(1, 2)
	return r.MulScalar(0.2989).Add(g.MulScalar(0.587)).Add(bl.MulScalar(0.114)).Unsqueeze(1)
}

// PoissonNoise is BasicSR's generate_poisson_noise_pt: scale and gray are
// float32 (B,) tensors. When any gray is set, the grey image (rounded to
// 1/255) is drawn through torch.poisson first with vals = 2^ceil(log2
// #unique levels); then, always, the rounded colour image. noise =
// poisson(xr·vals)/vals − xr, mixed by gray, times scale. The raw counts go
// to tap as "poisson_gray"/"poisson_color", the vals as "vals_gray"/"vals_color".
func PoissonNoise(x, scale, gray *torch.Tensor, gen *torch.Generator, tap Tap) *torch.Tensor {
	checkImage("poisson_noise", x)
	return torch.Scoped(func() *torch.Tensor {
		b, h, w := x.Size(0), x.Size(2), x.Size(3)
		gr := perImage("poisson_noise", "gray", gray, b).To(x.DType()).ToDevice(x.Device())
		sc := perImage("poisson_noise", "scale", scale, b).To(x.DType()).ToDevice(x.Device())
		calGray := gr.Sum().Item() > 0
		var noiseGray *torch.Tensor
		if calGray {
			g := quantise255(rgbToGray(x))
			vals := poissonVals(g)
			tap.emit("vals_gray", vals.View([]int64{b}))
			p := poissonOn(g.Mul(vals), gen)
			tap.emit("poisson_gray", p)
			noiseGray = p.Div(vals).Sub(g).Expand([]int64{b, 3, h, w})
		}
		xr := quantise255(x)
		vals := poissonVals(xr)
		tap.emit("vals_color", vals.View([]int64{b}))
		p := poissonOn(xr.Mul(vals), gen)
		tap.emit("poisson_color", p)
		noise := p.Div(vals).Sub(xr)
		if calGray {
			noise = noise.Mul(gr.RSub(1)).Add(noiseGray.Mul(gr))
		}
		return noise.Mul(sc)
	})
}

// AddPoissonNoise is add_poisson_noise_pt with clip=True, rounds=False:
// clamp(x + PoissonNoise(x, scale, gray), 0, 1) — the noise is added to the
// unrounded x.
func AddPoissonNoise(x, scale, gray *torch.Tensor, gen *torch.Generator, tap Tap) *torch.Tensor {
	return torch.Scoped(func() *torch.Tensor {
		return x.Add(PoissonNoise(x, scale, gray, gen, tap)).Clamp(0, 1)
	})
}

// RandomNoiseDraw is what random_add_{gaussian,poisson}_noise_pt draws
// before the noise fields: u_level = rand(B), level = u_level·(hi−lo)+lo,
// u_gray = rand(B), is_gray = (u_gray < grayProb) as float32.
type RandomNoiseDraw struct {
	ULevel, Level, UGray, IsGray *torch.Tensor
}

// Close frees the draw's tensors.
func (d RandomNoiseDraw) Close() {
	for _, t := range []*torch.Tensor{d.ULevel, d.Level, d.UGray, d.IsGray} {
		t.Close()
	}
}

// DrawNoiseLevel draws the level and the grey flag of B images from gen, in
// float32 on dev, as random_generate_*_noise_pt does. The tensors belong to
// the caller (Close).
func DrawNoiseLevel(b int64, lo, hi, grayProb float64, gen *torch.Generator, dev torch.Device) RandomNoiseDraw {
	var d RandomNoiseDraw
	s := torch.NewScope()
	defer s.Close()
	gd := onGen(gen, dev)
	d.ULevel = torch.Rand([]int64{b}, gen, torch.Float32, gd).ToDevice(dev)
	d.Level = d.ULevel.MulScalar(hi - lo).AddScalar(lo)
	d.UGray = torch.Rand([]int64{b}, gen, torch.Float32, gd).ToDevice(dev)
	d.IsGray = d.UGray.LtScalar(grayProb).To(torch.Float32)
	for _, t := range []*torch.Tensor{d.ULevel, d.Level, d.UGray, d.IsGray} {
		torch.Unscope(t)
	}
	return d
}

// onGen is the device draws for a tensor on dev come from: the generator's
// (a CPU generator draws on the CPU for a CUDA tensor, so CPU-seeded runs
// reproduce across devices, as RandnFor does).
func onGen(gen *torch.Generator, dev torch.Device) torch.Device {
	if gen != nil && gen.Device().Type != dev.Type {
		return gen.Device()
	}
	return dev
}

// poissonOn is torch.poisson(rate, gen), drawn on gen's device.
func poissonOn(rate *torch.Tensor, gen *torch.Generator) *torch.Tensor {
	d := onGen(gen, rate.Device())
	if d == rate.Device() {
		return rate.Poisson(gen)
	}
	return rate.ToDevice(d).Poisson(gen).ToDevice(rate.Device())
}

// uniformOn is torch.zeros(n).uniform_(lo, hi) in float32 drawn from gen, on dev.
func uniformOn(n int64, lo, hi float64, gen *torch.Generator, dev torch.Device) *torch.Tensor {
	d := onGen(gen, dev)
	u := torch.Zeros([]int64{n}, torch.Float32, d)
	u.Uniform_(lo, hi, gen)
	if d == dev {
		return u
	}
	return u.ToDevice(dev)
}
