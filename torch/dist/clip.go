package dist

import (
	"errors"
	"fmt"
	"math"

	"github.com/dp2osr/dp2o/torch"
	"github.com/dp2osr/dp2o/torch/optim"
)

// ClipShardedGradNorm is torch.nn.utils.clip_grad_norm_ over gradients
// that the ranks hold in disjoint shares (each parameter's gradient on one
// rank only, as a Reducer with ShardGradients leaves them): the total norm
// is that of every rank's gradients together, and each rank scales its own
// by clamp(maxNorm / (total + 1e-6), max=1). It is a collective: every rank
// calls it, with its own parameters (those without a gradient are
// skipped). It returns the total norm, the same on every rank; when it
// fails on one rank it fails on every rank.
//
// For a finite p each rank sums its gradients' norms to the power p and
// one all-reduce sums the ranks' (for p = inf, one all-reduce takes the
// maximum); in one process torch takes the p-norm of the stacked norms,
// the same up to rounding.
func (g *Group) ClipShardedGradNorm(params []*torch.Tensor, maxNorm, normType float64) (float64, error) {
	if normType <= 0 || math.IsNaN(normType) {
		return 0, errors.New("dist: clip_grad_norm: the norm's order must be positive")
	}
	inf := math.IsInf(normType, 1)
	part, perr := normPart(params, normType, inf)
	failed := 0.0
	if perr != nil {
		failed = 1
	}
	op := Sum
	if inf {
		op = Max
	}
	// The rank's part and whether it failed, in one all-reduce: a rank
	// that failed still takes part, and every rank learns of it.
	vs, err := g.AllReduceFloat64s(op, part, failed)
	switch {
	case err != nil:
		return 0, errors.Join(perr, fmt.Errorf("dist: clip_grad_norm: %w", err))
	case perr != nil:
		return 0, fmt.Errorf("dist: clip_grad_norm: %w", perr)
	case vs[1] > 0:
		return 0, errors.New("dist: clip_grad_norm: another rank failed")
	}
	total := vs[0]
	if !inf {
		total = math.Pow(total, 1/normType)
	}
	total = float64(float32(total)) // torch's total is a float32 tensor
	serr := scaleGrads(params, total, maxNorm)
	anyFailed, err := g.Any(serr != nil)
	switch {
	case err != nil:
		return 0, errors.Join(serr, fmt.Errorf("dist: clip_grad_norm: %w", err))
	case serr != nil:
		return 0, fmt.Errorf("dist: clip_grad_norm: %w", serr)
	case anyFailed:
		return 0, errors.New("dist: clip_grad_norm: another rank failed to scale its gradients")
	}
	return total, nil
}

// normPart is this rank's share of the total norm: Σ‖g‖ᵖ over its
// gradients (their largest |g| for p = inf), the norms in float32 on the
// gradients' device, as torch computes them.
func normPart(params []*torch.Tensor, normType float64, inf bool) (v float64, err error) {
	defer torch.Recover(&err)
	s := torch.NewScope()
	defer s.Close()
	var parts []*torch.Tensor
	var dev torch.Device
	for _, p := range params {
		gr := p.Grad()
		if gr == nil {
			continue
		}
		var n *torch.Tensor
		if inf {
			n = gr.Abs().Max()
		} else {
			n = gr.Norm(normType)
		}
		if len(parts) == 0 {
			dev = gr.Device()
		}
		parts = append(parts, n.Float().ToDevice(dev))
	}
	if len(parts) == 0 {
		return 0, nil
	}
	st := torch.Stack(parts, 0)
	if inf {
		return st.Max().Item(), nil
	}
	return st.Pow(normType).Sum().Item(), nil
}

// scaleGrads multiplies every gradient by clip_grad_norm_'s factor
// (optim.ClipCoef, a float32 value: the same product as torch's 0-dim
// factor tensor, with no copy of it to each gradient's device).
func scaleGrads(params []*torch.Tensor, total, maxNorm float64) (err error) {
	defer torch.Recover(&err)
	s := torch.NewScope()
	defer s.Close()
	coef := optim.ClipCoef(total, maxNorm)
	torch.NoGrad(func() {
		for _, p := range params {
			if gr := p.Grad(); gr != nil {
				gr.MulScalar_(coef)
			}
		}
	})
	return nil
}
