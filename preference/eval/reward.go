package eval

import (
	"errors"
	"fmt"
	"math"

	"github.com/dp2osr/dp2o/preference/label"
	"github.com/dp2osr/dp2o/reward"
)

// Bounds fixes a metric's normalisation range (raw units, [low, high]) instead
// of taking it from the pool.
type Bounds map[string][2]float64

// PoolRewards turns the raw scores of one or more labelled sets (one per
// model, with the same metrics) into comparable rewards: each metric is
// turned around when lower is better and min-max normalised over every
// sample of every image of every set (or between bounds[name], clamped to
// [0, 1]), a metric without spread gives 1/2, and the normalised scores
// are combined into the FR and NR halves (reward.Combine).
// rewards[s][i][k] is the reward of sample k of image i of set s.
func PoolRewards(sets []*label.Labels, bounds Bounds) ([][][]float64, error) {
	if len(sets) == 0 {
		return nil, errors.New("eval: no sets")
	}
	ms := sets[0].RewardMetrics()
	if len(ms) == 0 {
		return nil, errors.New("eval: the labels have no metrics")
	}
	for s, l := range sets {
		if len(l.Metrics) != len(ms) {
			return nil, fmt.Errorf("eval: set %d has %d metrics, set 0 has %d", s, len(l.Metrics), len(ms))
		}
		for k, m := range l.RewardMetrics() {
			if m != ms[k] {
				return nil, fmt.Errorf("eval: set %d's metric %d is %s, set 0's is %s: sets must be scored with the same metrics", s, k, m.Name, ms[k].Name)
			}
		}
		if len(l.Groups) == 0 {
			return nil, fmt.Errorf("eval: set %d has no images", s)
		}
	}
	for name := range bounds {
		found := false
		for _, m := range ms {
			found = found || m.Name == name
		}
		if !found {
			return nil, fmt.Errorf("eval: bounds for %s, which is not a metric of the labels", name)
		}
	}
	// The range of each metric (turned so that higher is better).
	lo, hi := make([]float64, len(ms)), make([]float64, len(ms))
	sign := make([]float64, len(ms))
	for k, m := range ms {
		sign[k] = 1
		if !m.HigherIsBetter {
			sign[k] = -1
		}
		if b, ok := bounds[m.Name]; ok {
			if !(b[1] > b[0]) {
				return nil, fmt.Errorf("eval: bounds of %s: [%g, %g] is empty", m.Name, b[0], b[1])
			}
			lo[k], hi[k] = sign[k]*b[0], sign[k]*b[1]
			if lo[k] > hi[k] {
				lo[k], hi[k] = hi[k], lo[k]
			}
			continue
		}
		lo[k], hi[k] = math.Inf(1), math.Inf(-1)
		for s, l := range sets {
			for _, g := range l.Groups {
				if len(g.Raw) == 0 {
					return nil, fmt.Errorf("eval: set %d image %s has no raw scores", s, g.ID)
				}
				for m, row := range g.Raw {
					if len(row) != len(ms) {
						return nil, fmt.Errorf("eval: set %d image %s sample %d has %d scores for %d metrics", s, g.ID, m, len(row), len(ms))
					}
					v := sign[k] * row[k]
					if math.IsNaN(v) || math.IsInf(v, 0) {
						return nil, fmt.Errorf("eval: set %d image %s sample %d: %s is %v", s, g.ID, m, ms[k].Name, row[k])
					}
					lo[k], hi[k] = math.Min(lo[k], v), math.Max(hi[k], v)
				}
			}
		}
	}
	out := make([][][]float64, len(sets))
	for s, l := range sets {
		out[s] = make([][]float64, len(l.Groups))
		for i, g := range l.Groups {
			norm := make([][]float64, len(g.Raw))
			for m, row := range g.Raw {
				norm[m] = make([]float64, len(ms))
				for k := range ms {
					if hi[k] == lo[k] {
						norm[m][k] = reward.DegenerateScore
						continue
					}
					norm[m][k] = math.Min(1, math.Max(0, (sign[k]*row[k]-lo[k])/(hi[k]-lo[k])))
				}
			}
			r, err := reward.Combine(norm, ms)
			if err != nil {
				return nil, fmt.Errorf("eval: set %d image %s: %w", s, g.ID, err)
			}
			out[s][i] = r
		}
	}
	return out, nil
}
