package degrade

import (
	"errors"
	"fmt"
	"math"
	"sort"

	"github.com/dp2osr/dp2o/torch"
)

// ErrDegenerateJPEG reports a JPEG quality of exactly 100: DiffJPEG's factor
// is then 0 and the reference produces an all-NaN image (uniform_(80, 100)
// in float32 reaches 100 about once in 4·10⁶ draws). Degrade reports it
// instead of returning NaNs; draw again with another seed.
var ErrDegenerateJPEG = errors.New("degrade: JPEG quality 100 (factor 0) gives the reference's all-NaN image")

// ResizeSincFirstProb is the probability of the final stage's "resize +
// sinc, then JPEG" order (fixed at ½ in the reference's code).
const ResizeSincFirstProb = 0.5

// pi is a float64 variable so that π/3 and π/5 round like numpy's np.pi/3
// (a Go constant expression would be computed exactly, then rounded).
var pi = math.Pi

// drawer draws the sampler's decisions from one generator: every uniform
// number is one float64 torch.rand draw.
type drawer struct{ gen *torch.Generator }

func (d drawer) u() float64 {
	dev := torch.CPU
	if d.gen != nil {
		dev = d.gen.Device()
	}
	t := torch.Rand([]int64{1}, d.gen, torch.Float64, dev)
	defer t.Close()
	return t.Item()
}

// uniform is a + (b−a)·u, as random.uniform and np.random.uniform.
func (d drawer) uniform(a, b float64) float64 { return a + (b-a)*d.u() }

// choice picks uniformly, as random.choice.
func (d drawer) choice(n int) int { return min(int(d.u()*float64(n)), n-1) }

// choices picks by weights, as random.choices(pop, weights)[0]: bisect_right
// of u·total in the cumulative weights.
func (d drawer) choices(w []float64) int {
	cum := make([]float64, len(w))
	s := 0.0
	for i, v := range w {
		s += v
		cum[i] = s
	}
	x := d.u() * s
	i := sort.Search(len(cum)-1, func(i int) bool { return cum[i] > x })
	return i
}

func kernelSizes(upTo int) []int {
	var out []int
	for k := 3; k < upTo; k += 2 {
		out = append(out, k)
	}
	return out
}

// kernel draws one dataset kernel (kernel1 or kernel2) in the dataset's
// order: size, sinc?, then ωc, or type, σx, [σy, θ], [u, β].
func (d drawer) kernel(sizes []int, sincProb float64, list []string, prob []float64, sigma, betag, betap [2]float64) KernelSpec {
	size := sizes[d.choice(len(sizes))]
	if d.u() < sincProb {
		lo := pi / 3
		if size >= 13 {
			lo = pi / 5
		}
		return KernelSpec{Type: KernelSinc, Size: size, OmegaC: d.uniform(lo, pi)}
	}
	k := KernelSpec{Type: list[d.choices(prob)], Size: size}
	k.SigmaX = d.uniform(sigma[0], sigma[1])
	switch k.Type {
	case KernelAniso, KernelGeneralizedAniso, KernelPlateauAniso:
		k.SigmaY = d.uniform(sigma[0], sigma[1])
		k.Theta = d.uniform(-pi, pi)
	}
	var br [2]float64
	switch k.Type {
	case KernelGeneralizedIso, KernelGeneralizedAniso:
		br = betag
	case KernelPlateauIso, KernelPlateauAniso:
		br = betap
	default:
		return k
	}
	if d.u() < 0.5 {
		k.Beta = d.uniform(br[0], 1)
	} else {
		k.Beta = d.uniform(1, br[1])
	}
	return k
}

// Sample draws a parameter record from gen, every decision in the
// reference's order: kernel1 (size, sinc?, its parameters), kernel2 (drawn,
// unused in first order), the final sinc filter (sinc?, size, ωc), then
// degrade_fun's choices: resize direction, scale, mode, noise kind, the
// second-order gate, the final order, the final resize mode. Degrade then
// continues on the same generator.
func (c Config) Sample(gen *torch.Generator) (rec Record, err error) {
	defer torch.Recover(&err)
	if err := c.Validate(); err != nil {
		return Record{}, err
	}
	d := drawer{gen}
	rec = Record{Config: c.Name, SF: c.SF, Kernel1PaddedSize: c.BlurKernelSize, Kernel2PaddedSize: c.BlurKernelSize2}
	rec.Kernel1 = d.kernel(kernelSizes(c.BlurKernelSize), c.SincProb, c.KernelList, c.KernelProb, c.BlurSigma, c.BetaGRange, c.BetaPRange)
	k2 := d.kernel(kernelSizes(c.BlurKernelSize2), c.SincProb2, c.KernelList2, c.KernelProb2, c.BlurSigma2, c.BetaGRange2, c.BetaPRange2)
	rec.Kernel2Unused = &k2
	if d.u() < c.FinalSincProb {
		sizes := kernelSizes(c.BlurKernelSize2)
		size := sizes[d.choice(len(sizes))]
		rec.SincKernel = KernelSpec{Type: KernelSinc, Size: size, OmegaC: d.uniform(pi/3, pi), PadTo: c.BlurKernelSize2}
	} else {
		rec.SincKernel = KernelSpec{Type: KernelPulse, Size: c.BlurKernelSize2}
	}

	r := &rec.Stage1.Resize
	r.UpDown = []string{ResizeUp, ResizeDown, ResizeKeep}[d.choices(c.ResizeProb[:])]
	switch r.UpDown {
	case ResizeUp:
		r.Scale = d.uniform(1, c.ResizeRange[1])
	case ResizeDown:
		r.Scale = d.uniform(c.ResizeRange[0], 1)
	default:
		r.Scale = 1
	}
	r.Mode = ResizeModes[d.choice(len(ResizeModes))]
	n := &rec.Stage1.Noise
	n.UKind = d.u()
	n.GrayProb = c.GrayNoiseProb
	if n.UKind < c.GaussianNoiseProb {
		n.Kind, n.Range = NoiseGaussian, c.NoiseRange
	} else {
		n.Kind, n.Range = NoisePoisson, c.PoissonScaleRange
	}
	rec.Stage1.JPEGRange = c.JPEGRange
	rec.SecondOrder = SecondOrder{Prob: c.SecondOrderProb, U: d.u()}
	rec.Final.UOrder = d.u()
	if rec.Final.UOrder < ResizeSincFirstProb {
		rec.Final.Order = OrderResizeSincJPEG
	} else {
		rec.Final.Order = OrderJPEGResizeSinc
	}
	rec.Final.Mode = ResizeModes[d.choice(len(ResizeModes))]
	rec.Final.JPEGRange = c.JPEGRange2
	return rec, nil
}

// Apply makes the LR image of one HR image with one seed: a CPU generator
// seeded with seed draws the HR crop (Crop, when GTSize > 0), the record
// (Sample) and the chain's draws (Degrade), in that order. hr is a
// (1,3,H,W) float32 RGB tensor in [0,1]; it returns the HR crop the LR was
// made from, the LR image and the completed record (with Seed set).
func (c Config) Apply(hr *torch.Tensor, seed uint64) (crop, lq *torch.Tensor, rec Record, err error) {
	gen, err := torch.NewGenerator(torch.CPU, seed)
	if err != nil {
		return nil, nil, Record{}, err
	}
	crop, err = c.Crop(hr, gen)
	if err != nil {
		return nil, nil, Record{}, err
	}
	rec, err = c.Sample(gen)
	if err != nil {
		crop.Close()
		return nil, nil, Record{}, err
	}
	rec.Seed = &seed
	lq, rec, err = Degrade(crop, rec, gen, nil)
	if err != nil {
		crop.Close()
		return nil, nil, rec, fmt.Errorf("seed %d: %w", seed, err)
	}
	return crop, lq, rec, nil
}
