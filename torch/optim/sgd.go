package optim

import (
	"fmt"

	"github.com/dp2osr/dp2o/torch"
)

// SGDConfig holds torch.optim.SGD's hyper-parameters.
type SGDConfig struct {
	LR          float64
	Momentum    float64
	Dampening   float64
	WeightDecay float64
	Nesterov    bool
}

func (c SGDConfig) validate() error {
	switch {
	case !finite(c.LR, c.Momentum, c.Dampening, c.WeightDecay):
		return fmt.Errorf("optim: SGD: non-finite hyper-parameter in %+v", c)
	case c.LR < 0:
		return fmt.Errorf("optim: SGD: invalid learning rate %g", c.LR)
	case c.Momentum < 0:
		return fmt.Errorf("optim: SGD: invalid momentum %g", c.Momentum)
	case c.WeightDecay < 0:
		return fmt.Errorf("optim: SGD: invalid weight decay %g", c.WeightDecay)
	case c.Nesterov && (c.Momentum <= 0 || c.Dampening != 0):
		return fmt.Errorf("optim: SGD: Nesterov momentum requires a momentum and zero dampening")
	}
	return nil
}

// SGD is torch.optim.SGD (maximize off) following PyTorch 1.13's
// _single_tensor_sgd: weight decay is added to the gradient, the momentum
// buffer starts as a copy of the first gradient (no dampening on that step),
// and Nesterov looks ahead along the buffer.
type SGD struct {
	cfg    SGDConfig
	lr     float64
	params []Param
	bufs   map[string]*torch.Tensor
	steps  map[string]int64
}

// NewSGD creates an SGD optimizer over params.
func NewSGD(params []Param, cfg SGDConfig) (*SGD, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	if err := checkParams(params); err != nil {
		return nil, err
	}
	return &SGD{cfg: cfg, lr: cfg.LR, params: params, bufs: map[string]*torch.Tensor{}, steps: map[string]int64{}}, nil
}

// Config returns the hyper-parameters (LR is the initial one).
func (o *SGD) Config() SGDConfig { return o.cfg }

// LR is the current learning rate.
func (o *SGD) LR() float64 { return o.lr }

// SetLR sets the learning rate of the next steps.
func (o *SGD) SetLR(lr float64) { o.lr = lr }

// BaseLR is the configured learning rate.
func (o *SGD) BaseLR() float64 { return o.cfg.LR }

// Params are the optimised parameters.
func (o *SGD) Params() []Param { return o.params }

// ZeroGrad drops every gradient.
func (o *SGD) ZeroGrad() { zeroGrad(o.params) }

// StepCount is the number of updates the named parameter has had.
func (o *SGD) StepCount(name string) int64 { return o.steps[name] }

// Step applies one update to every parameter that has a gradient.
func (o *SGD) Step() (err error) {
	defer torch.Recover(&err)
	c := o.cfg
	torch.NoGrad(func() {
		for _, p := range o.params {
			func() {
				s := torch.NewScope()
				defer s.Close()
				d := p.Tensor.Grad()
				if d == nil {
					return
				}
				if c.WeightDecay != 0 {
					d = d.AddScaled(p.Tensor, c.WeightDecay)
				}
				if c.Momentum != 0 {
					buf := o.bufs[p.Name]
					if buf == nil {
						buf = torch.Unscope(d.Clone().Detach())
						o.bufs[p.Name] = buf
					} else {
						buf.MulScalar_(c.Momentum)
						buf.Add_(d, 1-c.Dampening)
					}
					if c.Nesterov {
						d = d.AddScaled(buf, c.Momentum)
					} else {
						d = buf
					}
				}
				p.Tensor.Add_(d, -o.lr)
				o.steps[p.Name]++
			}()
		}
	})
	return nil
}

// Close frees the momentum buffers.
func (o *SGD) Close() {
	for _, b := range o.bufs {
		b.Close()
	}
	o.bufs = map[string]*torch.Tensor{}
}
