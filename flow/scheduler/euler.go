package scheduler

import (
	"fmt"

	"github.com/dp2osr/dp2o/torch"
)

// roundTo rounds a float32 to the precision of a half-precision dtype, as a
// 0-dim float32 tensor is cast to the dtype of the half tensor it
// multiplies under PyTorch's type promotion; other dtypes keep it.
func roundTo(v float32, dt torch.DType) float32 {
	if dt != torch.Float16 && dt != torch.BFloat16 {
		return v
	}
	sc := torch.NewScope()
	defer sc.Close()
	return torch.FromSlice([]float32{v}).To(dt).Float32s()[0]
}

// StepAt is the Euler update of step index i (FlowMatchEulerDiscrete
// Scheduler.step at its i-th call): prev = x.float() + (σ_{i+1} − σ_i)·v,
// cast to v's dtype. The difference is taken in float32; with
// half-precision v it is rounded to v's dtype first and the product is
// formed in that dtype, as PyTorch 1.13 computes the reference. No noise is
// drawn. It panics with a *torch.Error on bad input (see Stepper.Step).
func (s *Schedule) StepAt(i int, v, x *torch.Tensor) *torch.Tensor {
	if i < 0 || i+1 >= len(s.Sigmas) {
		torch.Errorf("flow_match.step", "step index %d out of range for %d sigmas", i, len(s.Sigmas))
	}
	sc := torch.NewScope()
	defer sc.Close()
	dt := roundTo(s.Sigmas[i+1]-s.Sigmas[i], v.DType())
	xf := x
	if xf.DType() != torch.Float32 {
		xf = xf.To(torch.Float32)
	}
	d := v.MulScalar(float64(dt))
	if d.DType() != torch.Float32 {
		d = d.To(torch.Float32)
	}
	prev := xf.Add(d)
	if prev.DType() != v.DType() {
		prev = prev.To(v.DType())
	}
	return sc.Keep(prev)
}

// Stepper is the stateful scheduler a pipeline drives: the first Step
// locates its timestep in the schedule (or starts at BeginIndex when set),
// each call advances the index by one, as diffusers' step_index.
type Stepper struct {
	*Schedule
	index int
	begun bool
	// BeginIndex, when not nil, is set_begin_index: the first Step uses it
	// instead of looking the timestep up.
	BeginIndex *int
}

// NewStepper returns a Stepper over s.
func NewStepper(s *Schedule) *Stepper { return &Stepper{Schedule: s} }

// StepIndex is the index the next Step uses (−1 before the first call
// without BeginIndex).
func (st *Stepper) StepIndex() int {
	if !st.begun {
		if st.BeginIndex != nil {
			return *st.BeginIndex
		}
		return -1
	}
	return st.index
}

// Step is scheduler.step(v, t, x): the Euler update at the current step
// index, which then advances.
func (st *Stepper) Step(v *torch.Tensor, t float32, x *torch.Tensor) (prev *torch.Tensor, err error) {
	if st == nil || st.Schedule == nil {
		return nil, fmt.Errorf("flow-match scheduler: step on a stepper without a schedule")
	}
	if !st.begun {
		if st.BeginIndex != nil {
			st.index = *st.BeginIndex
		} else if st.index, err = st.IndexForTimestep(t); err != nil {
			return nil, err
		}
		st.begun = true
	}
	if st.index+1 >= len(st.Sigmas) {
		return nil, fmt.Errorf("flow-match scheduler: step called %d times on a %d-step schedule", st.index+1, st.Steps())
	}
	if err := sameShape(v, x, "model output", "sample"); err != nil {
		return nil, err
	}
	defer torch.Recover(&err)
	prev = st.StepAt(st.index, v, x)
	st.index++
	return prev, nil
}

func sameShape(a, b *torch.Tensor, an, bn string) error {
	if a == nil || b == nil || a.Closed() || b.Closed() {
		return fmt.Errorf("flow-match scheduler: nil or closed tensor")
	}
	sa, sb := a.Shape(), b.Shape()
	if len(sa) != len(sb) {
		return fmt.Errorf("flow-match scheduler: %s %v and %s %v differ in shape", an, sa, bn, sb)
	}
	for i := range sa {
		if sa[i] != sb[i] {
			return fmt.Errorf("flow-match scheduler: %s %v and %s %v differ in shape", an, sa, bn, sb)
		}
	}
	return nil
}

// TimestepInput is the timestep argument FLUX pipelines give the
// transformer and the ControlNet at timestep t: t broadcast to the batch,
// cast to the latents' dtype (rounding it under float16/bfloat16), divided
// by 1000 in that dtype: (batch) on dev. The models multiply it by 1000
// again before their sinusoidal embedding.
func TimestepInput(t float32, batch int64, dtype torch.DType, dev torch.Device) *torch.Tensor {
	sc := torch.NewScope()
	defer sc.Close()
	x := torch.Full([]int64{batch}, float64(t), torch.Float32, dev)
	if dtype != torch.Float32 {
		x = x.To(dtype)
	}
	return sc.Keep(x.DivScalar(1000))
}
