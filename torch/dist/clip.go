package dist

import (
	"errors"
	"math"

	"github.com/dp2osr/dp2o/torch"
)

// ClipShardedGradNorm is torch.nn.utils.clip_grad_norm_ over gradients
// that the ranks hold in disjoint shares (each parameter's gradient on one
// rank only, as a Reducer with ShardGradients leaves them): the total norm
// is that of every rank's gradients together, and each rank scales its own
// by clamp(maxNorm / (total + 1e-6), max=1). It is a collective: every rank
// calls it, with its own parameters (those without a gradient are
// skipped). It returns the total norm, the same on every rank.
//
// For a finite p, each rank sums its gradients' norms to the power p and
// one all-reduce sums the ranks' (for p = inf, one all-reduce takes the
// maximum); in one process torch takes the p-norm of the stacked norms,
// the same up to rounding.
func (g *Group) ClipShardedGradNorm(params []*torch.Tensor, maxNorm, normType float64) (norm float64, err error) {
	if normType <= 0 || math.IsNaN(normType) {
		return 0, errors.New("dist: clip_grad_norm: the norm's order must be positive")
	}
	defer torch.Recover(&err)
	s := torch.NewScope()
	defer s.Close()
	inf := math.IsInf(normType, 1)
	dev := g.Device()
	var parts []*torch.Tensor
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
		parts = append(parts, n.Float().ToDevice(dev))
	}
	local := torch.Full([]int64{1}, 0, torch.Float32, dev)
	if len(parts) > 0 {
		st := torch.Stack(parts, 0)
		if inf {
			local = st.Max().Reshape([]int64{1})
		} else {
			local = st.Pow(normType).Sum().Reshape([]int64{1})
		}
	}
	op := Sum
	if inf {
		op = Max
	}
	if err := g.AllReduce(op, local); err != nil {
		return 0, err
	}
	total := local
	if !inf {
		total = local.Pow(1 / normType)
	}
	// Python's max_norm / tensor is tensor.reciprocal() * max_norm.
	coef := total.AddScalar(1e-6).Reciprocal().MulScalar(maxNorm).ClampMax(1)
	torch.NoGrad(func() {
		for _, p := range params {
			if gr := p.Grad(); gr != nil {
				gr.Mul_(coef.ToDevice(gr.Device()))
			}
		}
	})
	return total.Item(), nil
}
