package preference

import (
	"github.com/dp2osr/dp2o/torch"
	"github.com/dp2osr/dp2o/torch/nn"
	"github.com/dp2osr/dp2o/torch/optim"
)

// copyWeights puts a copy of each weight, in dtype, into src (the source a
// frozen reference is built from; the copies are src's).
func copyWeights(src nn.MapSource, ps []optim.Param, dtype torch.DType) error {
	return torch.Try(func() {
		torch.NoGrad(func() {
			for _, p := range ps {
				src[p.Name] = torch.Scoped(func() *torch.Tensor {
					t := p.Tensor.Detach()
					if t.DType() == dtype {
						return t.Clone()
					}
					return t.To(dtype)
				})
			}
		})
	})
}
