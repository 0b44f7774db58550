package reward

import (
	"context"
	"fmt"

	"github.com/dp2osr/dp2o/torch"
)

// rangeSlack is pyiqa's InferenceModel input check: it asserts
// min > -1e-6 and max < 1 + 1e-6.
const rangeSlack = 1e-6

// CheckInputs validates a Score call's arguments as pyiqa's InferenceModel
// does, for the scorer s: img (and ref when s is full-reference) must be
// floating-point (N,3,H,W) tensors with values in [0,1] (within 1e-6), the
// pair of the same shape and on the same device. It also returns ctx's
// error when ctx is done. Scorers call it first; the error names the
// metric.
func CheckInputs(ctx context.Context, s Scorer, img, ref *torch.Tensor) (err error) {
	name := s.Name()
	if ctx != nil {
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
	}
	defer func() {
		if err != nil {
			err = fmt.Errorf("%s: %w", name, err)
		}
	}()
	if err := checkImage("image", img); err != nil {
		return err
	}
	if !s.FullReference() {
		return nil
	}
	if err := checkImage("reference", ref); err != nil {
		return err
	}
	is, rs := img.Shape(), ref.Shape()
	for i := range is {
		if is[i] != rs[i] {
			return fmt.Errorf("image %v and reference %v differ in size: a full-reference metric needs pairs of the same shape", is, rs)
		}
	}
	if img.Device() != ref.Device() {
		return fmt.Errorf("image on %v and reference on %v", img.Device(), ref.Device())
	}
	return nil
}

func checkImage(what string, t *torch.Tensor) (err error) {
	if t == nil || t.Closed() {
		return fmt.Errorf("no %s tensor", what)
	}
	sh := t.Shape()
	if len(sh) != 4 || sh[1] != 3 {
		return fmt.Errorf("%s of shape %v: want (N,3,H,W) RGB", what, sh)
	}
	if sh[0] == 0 || sh[2] == 0 || sh[3] == 0 {
		return fmt.Errorf("%s of shape %v is empty", what, sh)
	}
	if !t.DType().IsFloat() {
		return fmt.Errorf("%s of dtype %v: want a floating-point tensor in [0,1]", what, t.DType())
	}
	var lo, hi float64
	if err := torch.Try(func() {
		s := torch.NewScope()
		defer s.Close()
		lo, hi = t.Min().Item(), t.Max().Item()
	}); err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	if !(lo > -rangeSlack) || !(hi < 1+rangeSlack) {
		return fmt.Errorf("%s values in [%g, %g]: want RGB in [0,1]", what, lo, hi)
	}
	return nil
}

// ScoresOf copies a (N) or (N,1) score tensor into float64s.
func ScoresOf(t *torch.Tensor) (out []float64, err error) {
	err = torch.Try(func() {
		s := torch.NewScope()
		defer s.Close()
		out = t.Reshape([]int64{-1}).To(torch.Float64).ToDevice(torch.CPU).Float64s()
	})
	return out, err
}

// RunScores runs a scorer's forward pass f in a scope, without autograd,
// and returns its (N) or (N,1) scores as float64s; a libtorch error in f
// comes back as an error prefixed with the metric's name. It is the body
// every network-backed Scorer.Score shares once its inputs are checked
// (CheckInputs).
func RunScores(metric string, f func() *torch.Tensor) (out []float64, err error) {
	var scoreErr error
	err = torch.Try(func() {
		s := torch.NewScope()
		defer s.Close()
		torch.NoGrad(func() {
			out, scoreErr = ScoresOf(f())
		})
	})
	if err == nil {
		err = scoreErr
	}
	if err != nil {
		return nil, fmt.Errorf("%s: %w", metric, err)
	}
	return out, nil
}
