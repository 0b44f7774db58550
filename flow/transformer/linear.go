package transformer

import (
	"github.com/dp2osr/dp2o/torch"
	"github.com/dp2osr/dp2o/torch/nn"
)

// linear is nn.Linear through torch.FastLinear: libtorch's at::linear, or,
// on the CPU without autograd and with the reference BLAS only
// (torch.OptimizedBLAS false), XNNPACK's kernels. With an optimised BLAS
// its sgemm is several times faster than XNNPACK on FLUX's 37–190 MB
// weights (XNNPACK streams the whole packed weight for every tile of rows).
func linear(l *nn.Linear, x *torch.Tensor) *torch.Tensor {
	return torch.FastLinear(x, l.Weight, l.Bias)
}
