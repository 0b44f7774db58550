package degrade

import (
	"fmt"
	"math"

	"github.com/dp2osr/dp2o/torch"
)

// Kernel types, as BasicSR's random_mixed_kernels names them, plus the sinc
// (circular low-pass) filter and the pulse (identity) filter.
const (
	KernelIso              = "iso"
	KernelAniso            = "aniso"
	KernelGeneralizedIso   = "generalized_iso"
	KernelGeneralizedAniso = "generalized_aniso"
	KernelPlateauIso       = "plateau_iso"
	KernelPlateauAniso     = "plateau_aniso"
	KernelSinc             = "sinc"
	KernelPulse            = "pulse"
)

// MixedKernelTypes is BasicSR's kernel_list order, the order of the
// kernel_prob weights of a Config.
var MixedKernelTypes = []string{KernelIso, KernelAniso, KernelGeneralizedIso, KernelGeneralizedAniso, KernelPlateauIso, KernelPlateauAniso}

// KernelSpec describes one blur kernel: its type, its odd size and its
// parameters. The JSON names are those of the reference's parameter record.
type KernelSpec struct {
	Type   string  `json:"type"`
	Size   int     `json:"kernel_size"`
	SigmaX float64 `json:"sigma_x,omitempty"`
	SigmaY float64 `json:"sigma_y,omitempty"` // anisotropic types
	Theta  float64 `json:"theta,omitempty"`   // anisotropic types, radians
	Beta   float64 `json:"beta,omitempty"`    // generalized and plateau types
	OmegaC float64 `json:"omega_c,omitempty"` // sinc: cut-off frequency in radians
	// PadTo is the pad_to argument of circular_lowpass_kernel (sinc only):
	// the kernel is zero-padded to PadTo×PadTo when PadTo > Size.
	PadTo int `json:"pad_to,omitempty"`
}

// Validate checks that the spec describes a kernel Kernel can build.
func (k KernelSpec) Validate() error {
	if k.Size < 1 || k.Size%2 != 1 {
		return fmt.Errorf("degrade: kernel %q: size %d is not a positive odd number", k.Type, k.Size)
	}
	bad := func(what string, v float64) error {
		return fmt.Errorf("degrade: kernel %q: %s %v must be a positive finite number", k.Type, what, v)
	}
	pos := func(v float64) bool { return v > 0 && !math.IsInf(v, 0) }
	switch k.Type {
	case KernelIso:
		if !pos(k.SigmaX) {
			return bad("sigma_x", k.SigmaX)
		}
	case KernelAniso:
		if !pos(k.SigmaX) {
			return bad("sigma_x", k.SigmaX)
		}
		if !pos(k.SigmaY) {
			return bad("sigma_y", k.SigmaY)
		}
	case KernelGeneralizedIso, KernelPlateauIso:
		if !pos(k.SigmaX) {
			return bad("sigma_x", k.SigmaX)
		}
		if !pos(k.Beta) {
			return bad("beta", k.Beta)
		}
	case KernelGeneralizedAniso, KernelPlateauAniso:
		if !pos(k.SigmaX) {
			return bad("sigma_x", k.SigmaX)
		}
		if !pos(k.SigmaY) {
			return bad("sigma_y", k.SigmaY)
		}
		if !pos(k.Beta) {
			return bad("beta", k.Beta)
		}
	case KernelSinc:
		if !pos(k.OmegaC) {
			return bad("omega_c", k.OmegaC)
		}
		if k.PadTo != 0 && (k.PadTo < 0 || k.PadTo%2 != 1) {
			return fmt.Errorf("degrade: sinc kernel: pad_to %d is not zero or a positive odd number", k.PadTo)
		}
	case KernelPulse:
	default:
		return fmt.Errorf("degrade: unknown kernel type %q", k.Type)
	}
	if math.IsNaN(k.Theta) || math.IsInf(k.Theta, 0) {
		return fmt.Errorf("degrade: kernel %q: theta %v is not finite", k.Type, k.Theta)
	}
	return nil
}

// Kernel builds the kernel in float64, row-major n×n, exactly as BasicSR
// computes it with numpy: the Gaussian family on the mesh grid
// (column offset x, row offset y) with Σ⁻¹ from the rotated Σ, normalised
// by its sum (twice for the mixed types, as random_mixed_kernels does:
// once in bivariate_*, once in random_bivariate_*); the sinc as
// circular_lowpass_kernel (centre ωc²/4π, normalised, zero-padded to PadTo);
// the pulse as a one at the centre. n is Size, or PadTo for a padded sinc.
func Kernel(k KernelSpec) ([]float64, int, error) {
	if err := k.Validate(); err != nil {
		return nil, 0, err
	}
	n := k.Size
	switch k.Type {
	case KernelPulse:
		out := make([]float64, n*n)
		out[(n/2)*n+n/2] = 1
		return out, n, nil
	case KernelSinc:
		out := circularLowpass(k.OmegaC, n)
		if k.PadTo > n {
			return PadKernel(out, n, k.PadTo), k.PadTo, nil
		}
		return out, n, nil
	}
	var sigma [2][2]float64
	switch k.Type {
	case KernelIso, KernelGeneralizedIso, KernelPlateauIso:
		s2 := k.SigmaX * k.SigmaX
		sigma = [2][2]float64{{s2, 0}, {0, s2}}
	default:
		sigma = sigmaMatrix2(k.SigmaX, k.SigmaY, k.Theta)
	}
	inv, ok := inverse2(sigma)
	if !ok {
		return nil, 0, fmt.Errorf("degrade: kernel %q: singular covariance", k.Type)
	}
	// ax = arange(-k//2 + 1, k//2 + 1); grid[i][j] = (ax[j], ax[i]).
	ax := make([]float64, n)
	for i := range ax {
		ax[i] = float64(i - (n-1)/2)
	}
	out := make([]float64, n*n)
	for i := 0; i < n; i++ {
		for j := 0; j < n; j++ {
			gx, gy := ax[j], ax[i]
			a := gx*inv[0][0] + gy*inv[1][0]
			b := gx*inv[0][1] + gy*inv[1][1]
			q := a*gx + b*gy
			var v float64
			switch k.Type {
			case KernelIso, KernelAniso:
				v = math.Exp(-0.5 * q)
			case KernelGeneralizedIso, KernelGeneralizedAniso:
				v = math.Exp(-0.5 * math.Pow(q, k.Beta))
			default: // plateau
				v = 1 / (math.Pow(q, k.Beta) + 1)
			}
			out[i*n+j] = v
		}
	}
	normalise(out)
	normalise(out)
	return out, n, nil
}

// sigmaMatrix2 is U·diag(σx², σy²)·Uᵀ with U the rotation by theta.
func sigmaMatrix2(sx, sy, theta float64) [2][2]float64 {
	d := [2][2]float64{{sx * sx, 0}, {0, sy * sy}}
	c, s := math.Cos(theta), math.Sin(theta)
	u := [2][2]float64{{c, -s}, {s, c}}
	var dut, out [2][2]float64
	for i := 0; i < 2; i++ {
		for j := 0; j < 2; j++ {
			dut[i][j] = d[i][0]*u[j][0] + d[i][1]*u[j][1]
		}
	}
	for i := 0; i < 2; i++ {
		for j := 0; j < 2; j++ {
			out[i][j] = u[i][0]*dut[0][j] + u[i][1]*dut[1][j]
		}
	}
	return out
}

// inverse2 inverts a 2×2 matrix (the adjugate over the determinant; it
// agrees with np.linalg.inv to a few ulps, far inside the kernels' 1e-12).
func inverse2(m [2][2]float64) ([2][2]float64, bool) {
	a, b, c, d := m[0][0], m[0][1], m[1][0], m[1][1]
	det := a*d - b*c
	if det == 0 || math.IsNaN(det) || math.IsInf(det, 0) {
		return [2][2]float64{}, false
	}
	return [2][2]float64{{d / det, -b / det}, {-c / det, a / det}}, true
}

// circularLowpass is BasicSR's circular_lowpass_kernel without padding.
func circularLowpass(cutoff float64, n int) []float64 {
	out := make([]float64, n*n)
	c := float64(n-1) / 2
	for x := 0; x < n; x++ {
		for y := 0; y < n; y++ {
			dx, dy := float64(x)-c, float64(y)-c
			r := math.Sqrt(dx*dx + dy*dy)
			out[x*n+y] = cutoff * math.J1(cutoff*r) / (2 * math.Pi * r)
		}
	}
	out[((n-1)/2)*n+(n-1)/2] = cutoff * cutoff / (4 * math.Pi)
	normalise(out)
	return out
}

func normalise(k []float64) {
	s := pairwiseSum(k)
	for i := range k {
		k[i] /= s
	}
}

// pairwiseSum sums like numpy's np.sum over a contiguous float64 array:
// unrolled by 8 below 128 elements, split in halves above.
func pairwiseSum(a []float64) float64 {
	n := len(a)
	if n < 8 {
		s := 0.0
		for _, v := range a {
			s += v
		}
		return s
	}
	if n <= 128 {
		var r [8]float64
		copy(r[:], a[:8])
		i := 8
		for ; i+8 <= n; i += 8 {
			for j := 0; j < 8; j++ {
				r[j] += a[i+j]
			}
		}
		s := ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]))
		for ; i < n; i++ {
			s += a[i]
		}
		return s
	}
	m := n / 2
	m -= m % 8
	return pairwiseSum(a[:m]) + pairwiseSum(a[m:])
}

// PadKernel zero-pads an n×n kernel to to×to (centred), as np.pad does.
func PadKernel(k []float64, n, to int) []float64 {
	if to <= n {
		return k
	}
	p := (to - n) / 2
	out := make([]float64, to*to)
	for i := 0; i < n; i++ {
		copy(out[(i+p)*to+p:(i+p)*to+p+n], k[i*n:(i+1)*n])
	}
	return out
}

// KernelTensor casts a float64 n×n kernel to the float32 (n, n) CPU tensor
// the degradation uses (torch.FloatTensor of the numpy kernel).
func KernelTensor(k []float64, n int) *torch.Tensor {
	f := make([]float32, len(k))
	for i, v := range k {
		f[i] = float32(v)
	}
	return torch.FromSlice(f, int64(n), int64(n))
}
