package optim

import (
	"fmt"
	"math"
)

// Schedule maps a step number (0-based) to a learning-rate multiplier.
type Schedule func(step int) float64

// ScheduleConfig selects one of diffusers' get_scheduler schedules.
type ScheduleConfig struct {
	// Name is "constant", "constant_with_warmup", "linear", "cosine" or
	// "cosine_with_restarts".
	Name        string
	WarmupSteps int
	// TotalSteps is num_training_steps (linear and cosine schedules).
	TotalSteps int
	// Cycles is num_cycles: 0.5 by default for "cosine" (half a cosine, down
	// to zero), 1 for "cosine_with_restarts".
	Cycles float64
}

// NewSchedule returns the multiplier function of one of diffusers'
// schedules (diffusers.optimization), with the same float arithmetic.
func NewSchedule(c ScheduleConfig) (Schedule, error) {
	w, total := c.WarmupSteps, c.TotalSteps
	if w < 0 || total < 0 {
		return nil, fmt.Errorf("optim: schedule %q: negative step counts (warmup %d, total %d)", c.Name, w, total)
	}
	warm := func(step int) float64 { return float64(step) / float64(max(1, w)) }
	progress := func(step int) float64 { return float64(step-w) / float64(max(1, total-w)) }
	switch c.Name {
	case "constant", "":
		return func(int) float64 { return 1 }, nil
	case "constant_with_warmup":
		return func(step int) float64 {
			if step < w {
				return warm(step)
			}
			return 1
		}, nil
	case "linear":
		return func(step int) float64 {
			if step < w {
				return warm(step)
			}
			return max(0, float64(total-step)/float64(max(1, total-w)))
		}, nil
	case "cosine":
		cycles := c.Cycles
		if cycles == 0 {
			cycles = 0.5
		}
		return func(step int) float64 {
			if step < w {
				return warm(step)
			}
			return max(0, 0.5*(1+math.Cos(math.Pi*cycles*2*progress(step))))
		}, nil
	case "cosine_with_restarts":
		cycles := c.Cycles
		if cycles == 0 {
			cycles = 1
		}
		return func(step int) float64 {
			if step < w {
				return warm(step)
			}
			p := progress(step)
			if p >= 1 {
				return 0
			}
			return max(0, 0.5*(1+math.Cos(math.Pi*math.Mod(cycles*p, 1))))
		}, nil
	}
	return nil, fmt.Errorf("optim: unknown schedule %q (want constant, constant_with_warmup, linear, cosine or cosine_with_restarts)", c.Name)
}

// LRSetter is what a Scheduler drives (every Optimizer is one).
type LRSetter interface {
	BaseLR() float64
	SetLR(lr float64)
}

// Scheduler is torch's LambdaLR: the learning rate is the optimizer's base
// rate times the schedule at the current step. Creating it sets the rate of
// step 0 (zero during a warm-up, as in diffusers' training scripts); Step,
// called after each optimizer step, moves to the next.
type Scheduler struct {
	opt   LRSetter
	sched Schedule
	step  int
}

// NewScheduler attaches a schedule to an optimizer and sets its learning rate.
func NewScheduler(opt LRSetter, c ScheduleConfig) (*Scheduler, error) {
	f, err := NewSchedule(c)
	if err != nil {
		return nil, err
	}
	s := &Scheduler{opt: opt, sched: f}
	s.apply()
	return s, nil
}

func (s *Scheduler) apply() { s.opt.SetLR(s.opt.BaseLR() * s.sched(s.step)) }

// Step advances the schedule by one step.
func (s *Scheduler) Step() {
	s.step++
	s.apply()
}

// LastStep is the number of Step calls so far (LambdaLR's last_epoch).
func (s *Scheduler) LastStep() int { return s.step }

// SetLastStep restores the position of a resumed run and sets the rate.
func (s *Scheduler) SetLastStep(n int) {
	s.step = n
	s.apply()
}

// LR is the learning rate at the current step.
func (s *Scheduler) LR() float64 { return s.opt.BaseLR() * s.sched(s.step) }
