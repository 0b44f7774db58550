package dist

import (
	"errors"

	"github.com/dp2osr/dp2o/torch"
)

// Averager averages gradients after the backward pass (AverageGradients)
// behind a Reducer's methods, so that a training loop drives either the
// same way: Prepare before each backward pass, Finish after the step's
// last one, Abort instead of Finish when this rank's step failed.
type Averager struct {
	g      *Group
	params []*torch.Tensor
	armed  bool
}

// NewAverager averages the gradients of params (every rank must pass the
// same list) when Finish is called.
func (g *Group) NewAverager(params []*torch.Tensor) *Averager {
	return &Averager{g: g, params: params}
}

// Prepare comes before each backward pass; sync marks the step's last.
func (a *Averager) Prepare(sync bool) error {
	a.armed = sync
	return nil
}

// Finish, after the step's last backward pass, leaves each gradient's mean
// over the ranks in its .grad (AverageGradients).
func (a *Averager) Finish() error {
	if !a.armed {
		a.Abort()
		return errors.New("dist: averager: finish without prepare(sync)")
	}
	a.armed = false
	_, err := a.g.averageGradients(a.params, false)
	return err
}

// Abort, instead of Finish, closes a step that failed on this rank: it
// takes part in the averaging's first collective, and every rank's Finish
// or Abort returns an error, none waiting for this rank until the timeout.
func (a *Averager) Abort() error {
	a.armed = false
	_, err := a.g.averageGradients(a.params, true)
	if err == nil && a.g.WorldSize() > 1 {
		err = errors.New("dist: averager: this rank's step failed")
	}
	return err
}
