package swin

import (
	"fmt"
	"math"

	"github.com/dp2osr/dp2o/torch"
)

// InterpolateRelativePositionTable resamples a relative position bias table
// (srcNumPos, heads) to dstNumPos rows as RAM's checkpoint loader does
// (interpolate_relative_pos_embed, the BEiT recipe): a table of another
// window size is read on a geometric-progression grid and each head is
// evaluated on the integer grid by a bicubic interpolating spline (scipy's
// interp2d(kind='cubic'), i.e. FITPACK's s=0 tensor-product spline, whose
// knots give the not-a-knot end conditions). A table of the right size is
// returned as a new handle, unchanged. Computed in float64, returned in the
// table's dtype on its device.
func InterpolateRelativePositionTable(table *torch.Tensor, dstNumPos int64) (out *torch.Tensor, err error) {
	defer torch.Recover(&err)
	if table.Dim() != 2 {
		return nil, fmt.Errorf("relative position table: want (positions, heads), got %v", table.Shape())
	}
	srcNum, heads := table.Size(0), table.Size(1)
	src := int64(math.Sqrt(float64(srcNum)))
	dst := int64(math.Sqrt(float64(dstNumPos)))
	if src == dst {
		return table.Alias(), nil
	}
	if src*src != srcNum || dst*dst != dstNumPos {
		return nil, fmt.Errorf("relative position table: %d and %d positions are not square grids", srcNum, dstNumPos)
	}
	if src < 4 {
		return nil, fmt.Errorf("relative position table: a %d×%d grid is too small for a cubic spline", src, src)
	}
	// The source grid: ±(1, 1+q, 1+q+q², …) with q found by bisection so
	// that the outermost point reaches dst//2.
	half := src / 2
	left, right := 1.01, 1.5
	var q float64
	for right-left > 1e-6 {
		q = (left + right) / 2
		gp := (1 - math.Pow(q, float64(half))) / (1 - q)
		if gp > float64(dst/2) {
			right = q
		} else {
			left = q
		}
	}
	dis := make([]float64, 0, half)
	cur := 1.0
	for i := int64(0); i < half; i++ {
		dis = append(dis, cur)
		cur += math.Pow(q, float64(i+1))
	}
	xs := make([]float64, 0, 2*half+1)
	for i := len(dis) - 1; i >= 0; i-- {
		xs = append(xs, -dis[i])
	}
	xs = append(xs, 0)
	xs = append(xs, dis...)
	if int64(len(xs)) != src {
		return nil, fmt.Errorf("relative position table: %d source positions per axis, want an odd count", src)
	}
	t := float64(dst / 2)
	var dxs []float64
	for v := -t; v < t+0.1; v += 1 {
		dxs = append(dxs, v)
	}
	m := splineMatrix(xs, dxs) // len(dxs) × src
	nd := int64(len(dxs))
	vals := torch.Scoped(func() *torch.Tensor { return table.To(torch.Float64).Contiguous() })
	z := vals.Float64s() // (src·src, heads)
	vals.Close()
	res := make([]float32, nd*nd*heads)
	tmp := make([]float64, nd*src)
	for h := int64(0); h < heads; h++ {
		// tmp = M · Z (rows: y), then out = tmp · Mᵀ (columns: x).
		for i := int64(0); i < nd; i++ {
			for c := int64(0); c < src; c++ {
				var s float64
				for r := int64(0); r < src; r++ {
					s += m[i*src+r] * z[(r*src+c)*heads+h]
				}
				tmp[i*src+c] = s
			}
		}
		for i := int64(0); i < nd; i++ {
			for j := int64(0); j < nd; j++ {
				var s float64
				for c := int64(0); c < src; c++ {
					s += tmp[i*src+c] * m[j*src+c]
				}
				res[(i*nd+j)*heads+h] = float32(s)
			}
		}
	}
	return torch.Scoped(func() *torch.Tensor {
		return torch.FromSlice(res, nd*nd, heads).To(table.DType()).ToDevice(table.Device())
	}), nil
}

// splineMatrix returns the (len(at), len(xs)) matrix that maps values at
// the knots xs to the not-a-knot cubic interpolating spline's values at the
// points at (clamped to the knots' range, as FITPACK's evaluator does).
func splineMatrix(xs, at []float64) []float64 {
	n := len(xs)
	out := make([]float64, len(at)*n)
	y := make([]float64, n)
	for k := 0; k < n; k++ {
		for i := range y {
			y[i] = 0
		}
		y[k] = 1
		s := secondDerivatives(xs, y)
		for p, t := range at {
			out[p*n+k] = evalSpline(xs, y, s, t)
		}
	}
	return out
}

// secondDerivatives solves for the not-a-knot cubic spline's second
// derivatives at the knots (n ≥ 4) by Gaussian elimination.
func secondDerivatives(x, y []float64) []float64 {
	n := len(x)
	a := make([][]float64, n)
	for i := range a {
		a[i] = make([]float64, n+1)
	}
	h := func(i int) float64 { return x[i+1] - x[i] }
	// Third derivative continuous at x1 and x_{n−2}.
	a[0][0], a[0][1], a[0][2] = h(1), -(h(0) + h(1)), h(0)
	a[n-1][n-3], a[n-1][n-2], a[n-1][n-1] = h(n-2), -(h(n-3) + h(n-2)), h(n-3)
	for i := 1; i < n-1; i++ {
		a[i][i-1], a[i][i], a[i][i+1] = h(i-1), 2*(h(i-1)+h(i)), h(i)
		a[i][n] = 6 * ((y[i+1]-y[i])/h(i) - (y[i]-y[i-1])/h(i-1))
	}
	for c := 0; c < n; c++ {
		p := c
		for r := c + 1; r < n; r++ {
			if math.Abs(a[r][c]) > math.Abs(a[p][c]) {
				p = r
			}
		}
		a[c], a[p] = a[p], a[c]
		for r := c + 1; r < n; r++ {
			f := a[r][c] / a[c][c]
			for k := c; k <= n; k++ {
				a[r][k] -= f * a[c][k]
			}
		}
	}
	s := make([]float64, n)
	for r := n - 1; r >= 0; r-- {
		v := a[r][n]
		for k := r + 1; k < n; k++ {
			v -= a[r][k] * s[k]
		}
		s[r] = v / a[r][r]
	}
	return s
}

func evalSpline(x, y, s []float64, t float64) float64 {
	n := len(x)
	t = math.Min(math.Max(t, x[0]), x[n-1])
	i := 0
	for i < n-2 && t > x[i+1] {
		i++
	}
	h := x[i+1] - x[i]
	a, b := x[i+1]-t, t-x[i]
	return s[i]*a*a*a/(6*h) + s[i+1]*b*b*b/(6*h) + (y[i]/h-s[i]*h/6)*a + (y[i+1]/h-s[i+1]*h/6)*b
}
