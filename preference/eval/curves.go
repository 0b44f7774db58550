package eval

import (
	"errors"
	"fmt"
	"math"
	"sort"
)

// Estimator says how M samples are drawn from the K of an image.
type Estimator string

const (
	// Subsets averages over every M-subset of the K samples.
	Subsets Estimator = "subsets"
	// Prefix takes the first M samples.
	Prefix Estimator = "prefix"
)

// ParseEstimator reads "subsets" or "prefix".
func ParseEstimator(s string) (Estimator, error) {
	switch e := Estimator(s); e {
	case Subsets, Prefix:
		return e, nil
	}
	return "", fmt.Errorf("eval: estimator %q: want subsets or prefix", s)
}

// Point is one M of the curves.
type Point struct {
	M                 int
	Best, Mean, Worst float64
}

// Curves computes Best@M, Mean@M and Worst@M for M = 1 … maxM from the
// rewards of each test image's samples (rewards[i] holds image i's K
// rewards in noise-pool order; every image needs K ≥ maxM).
func Curves(rewards [][]float64, maxM int, est Estimator) ([]Point, error) {
	if len(rewards) == 0 {
		return nil, errors.New("eval: no test images")
	}
	if maxM < 1 {
		return nil, fmt.Errorf("eval: max M %d: want at least 1", maxM)
	}
	if est == "" {
		est = Subsets
	}
	if _, err := ParseEstimator(string(est)); err != nil {
		return nil, err
	}
	for i, r := range rewards {
		if len(r) < maxM {
			return nil, fmt.Errorf("eval: test image %d has %d samples, fewer than M = %d", i, len(r), maxM)
		}
		for k, v := range r {
			if math.IsNaN(v) || math.IsInf(v, 0) {
				return nil, fmt.Errorf("eval: test image %d sample %d: reward %v", i, k, v)
			}
		}
	}
	pts := make([]Point, maxM)
	n := float64(len(rewards))
	for m := 1; m <= maxM; m++ {
		p := Point{M: m}
		for _, r := range rewards {
			var b, mean, w float64
			if est == Prefix {
				b, mean, w = stats(r[:m])
			} else {
				b, mean, w = subsetStats(r, m)
			}
			p.Best += b / n
			p.Mean += mean / n
			p.Worst += w / n
		}
		pts[m-1] = p
	}
	return pts, nil
}

// stats is the max, mean and min of r.
func stats(r []float64) (hi, mean, lo float64) {
	hi, lo = math.Inf(-1), math.Inf(1)
	for _, v := range r {
		hi, lo = math.Max(hi, v), math.Min(lo, v)
		mean += v
	}
	return hi, mean / float64(len(r)), lo
}

// subsetStats is the expected max, mean and min of a uniformly random
// m-subset of r: with r sorted ascending, the i-th smallest (1-based) is
// the max of C(i−1, m−1) of the C(K, m) subsets and the min of C(K−i, m−1).
func subsetStats(r []float64, m int) (hi, mean, lo float64) {
	s := append([]float64(nil), r...)
	sort.Float64s(s)
	K := len(s)
	total := lchoose(K, m)
	for i := 1; i <= K; i++ {
		v := s[i-1]
		if i >= m {
			hi += v * math.Exp(lchoose(i-1, m-1)-total)
		}
		if K-i >= m-1 {
			lo += v * math.Exp(lchoose(K-i, m-1)-total)
		}
		mean += v
	}
	return hi, mean / float64(K), lo
}

// lchoose is log C(n, k).
func lchoose(n, k int) float64 {
	a, _ := math.Lgamma(float64(n + 1))
	b, _ := math.Lgamma(float64(k + 1))
	c, _ := math.Lgamma(float64(n - k + 1))
	return a - b - c
}
