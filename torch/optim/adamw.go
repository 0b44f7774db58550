package optim

import (
	"fmt"

	"github.com/dp2osr/dp2o/torch"
)

// AdamWConfig holds torch.optim.AdamW's hyper-parameters.
type AdamWConfig struct {
	LR          float64
	Beta1       float64
	Beta2       float64
	Eps         float64
	WeightDecay float64
}

// DefaultAdamW is PyTorch's defaults: lr 1e-3, betas (0.9, 0.999), eps 1e-8,
// weight_decay 1e-2.
func DefaultAdamW() AdamWConfig {
	return AdamWConfig{LR: 1e-3, Beta1: 0.9, Beta2: 0.999, Eps: 1e-8, WeightDecay: 1e-2}
}

func (c AdamWConfig) validate() error {
	switch {
	case !finite(c.LR, c.Beta1, c.Beta2, c.Eps, c.WeightDecay):
		return fmt.Errorf("optim: AdamW: non-finite hyper-parameter in %+v", c)
	case c.LR < 0:
		return fmt.Errorf("optim: AdamW: invalid learning rate %g", c.LR)
	case c.Eps < 0:
		return fmt.Errorf("optim: AdamW: invalid epsilon %g", c.Eps)
	case c.Beta1 < 0 || c.Beta1 >= 1:
		return fmt.Errorf("optim: AdamW: invalid beta1 %g", c.Beta1)
	case c.Beta2 < 0 || c.Beta2 >= 1:
		return fmt.Errorf("optim: AdamW: invalid beta2 %g", c.Beta2)
	case c.WeightDecay < 0:
		return fmt.Errorf("optim: AdamW: invalid weight decay %g", c.WeightDecay)
	}
	return nil
}

type adamState struct {
	step             int64
	expAvg, expAvgSq *torch.Tensor
}

// AdamW is torch.optim.AdamW (amsgrad off, maximize off), updating each
// parameter with PyTorch 1.13's _single_tensor_adamw in one shim call.
type AdamW struct {
	cfg    AdamWConfig
	lr     float64
	params []Param
	state  map[string]*adamState
}

// NewAdamW creates an AdamW optimizer over params.
func NewAdamW(params []Param, cfg AdamWConfig) (*AdamW, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	if err := checkParams(params); err != nil {
		return nil, err
	}
	return &AdamW{cfg: cfg, lr: cfg.LR, params: params, state: map[string]*adamState{}}, nil
}

// Config returns the hyper-parameters (LR is the initial one).
func (o *AdamW) Config() AdamWConfig { return o.cfg }

// LR is the current learning rate.
func (o *AdamW) LR() float64 { return o.lr }

// SetLR sets the learning rate of the next steps.
func (o *AdamW) SetLR(lr float64) { o.lr = lr }

// BaseLR is the configured learning rate.
func (o *AdamW) BaseLR() float64 { return o.cfg.LR }

// Params are the optimised parameters.
func (o *AdamW) Params() []Param { return o.params }

// ZeroGrad drops every gradient.
func (o *AdamW) ZeroGrad() { zeroGrad(o.params) }

// StepCount is the number of updates the named parameter has had.
func (o *AdamW) StepCount(name string) int64 {
	if s := o.state[name]; s != nil {
		return s.step
	}
	return 0
}

// Step applies one update to every parameter that has a gradient; the
// others are left alone and their step counts do not advance.
func (o *AdamW) Step() (err error) {
	defer torch.Recover(&err)
	torch.NoGrad(func() {
		for _, p := range o.params {
			g := p.Tensor.Grad()
			if g == nil {
				continue
			}
			st := o.state[p.Name]
			if st == nil {
				st = &adamState{
					expAvg:   torch.Unscope(p.Tensor.ZerosLike()),
					expAvgSq: torch.Unscope(p.Tensor.ZerosLike()),
				}
				o.state[p.Name] = st
			}
			st.step++
			torch.AdamWStep(p.Tensor, g, st.expAvg, st.expAvgSq, st.step, o.lr, o.cfg.Beta1, o.cfg.Beta2, o.cfg.Eps, o.cfg.WeightDecay)
			g.Close()
		}
	})
	return nil
}

// Close frees the moment estimates.
func (o *AdamW) Close() {
	for _, s := range o.state {
		s.expAvg.Close()
		s.expAvgSq.Close()
	}
	o.state = map[string]*adamState{}
}
