package scheduler

import (
	"fmt"
	"math"
)

// inferenceTimesteps is set_timesteps(n) of DDPM and DDIM: n descending
// timesteps spaced as config.timestep_spacing says, computed as numpy does
// (float64, round half to even).
func inferenceTimesteps(c Config, n int) ([]int64, error) {
	T := c.NumTrainTimesteps
	if n < 1 {
		return nil, fmt.Errorf("scheduler: %d inference steps", n)
	}
	if n > T {
		return nil, fmt.Errorf("scheduler: %d inference steps exceed num_train_timesteps %d", n, T)
	}
	var ts []int64
	switch c.TimestepSpacing {
	case "linspace":
		// np.linspace(0, T−1, n).round()[::-1]
		ts = make([]int64, n)
		step := float64(T-1) / float64(n-1)
		for i := range n {
			v := float64(i) * step
			if i == n-1 {
				v = float64(T - 1)
			}
			if n == 1 {
				v = 0 // numpy yields NaN here; the only step is t = 0
			}
			ts[n-1-i] = int64(math.RoundToEven(v))
		}
	case "leading":
		// (np.arange(0, n) · (T // n)).round()[::-1] + steps_offset
		r := T / n
		ts = make([]int64, n)
		for i := range n {
			ts[n-1-i] = int64(i*r + c.StepsOffset)
		}
	case "trailing":
		// np.round(np.arange(T, 0, −T/n)) − 1
		ts = arange(float64(T), 0, -float64(T)/float64(n))
		for i, v := range ts {
			ts[i] = v - 1
		}
	default:
		return nil, fmt.Errorf("scheduler: timestep_spacing %q is not supported", c.TimestepSpacing)
	}
	return ts, nil
}

// arange is np.round(np.arange(start, stop, step)) for float64 arguments:
// numpy sizes the result ceil((stop−start)/step), writes start and
// start+step, and fills the rest with start + i·δ where δ = (start+step) −
// start.
func arange(start, stop, step float64) []int64 {
	n := int(math.Ceil((stop - start) / step))
	if n <= 0 {
		return nil
	}
	delta := (start + step) - start
	out := make([]int64, n)
	for i := range n {
		var v float64
		switch i {
		case 0:
			v = start
		case 1:
			v = start + step
		default:
			v = start + float64(i)*delta
		}
		out[i] = int64(math.RoundToEven(v))
	}
	return out
}
