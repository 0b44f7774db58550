package transformer

import (
	"os"
	"strings"
	"sync"

	"github.com/dp2osr/dp2o/torch"
	"github.com/dp2osr/dp2o/torch/nn"
)

// optimizedBLAS reports whether libtorch's BLAS in this process is an
// optimised one (OpenBLAS, MKL, BLIS), judged once from the libraries
// mapped into the process. FLUX's linears have weights of 37–190 MB; with
// an optimised BLAS its sgemm is several times faster on them than the
// XNNPACK kernels of torch.FastLinear, which stream the whole packed weight
// for every tile of rows. With the reference BLAS (Debian's default
// libblas) XNNPACK is still the faster of the two.
var optimizedBLAS = sync.OnceValue(func() bool {
	maps, err := os.ReadFile("/proc/self/maps")
	if err != nil {
		return false
	}
	s := strings.ToLower(string(maps))
	for _, lib := range []string{"openblas", "libmkl", "libblis"} {
		if strings.Contains(s, lib) {
			return true
		}
	}
	return false
})

// linear is nn.Linear: libtorch's at::linear with an optimised BLAS,
// otherwise torch.FastLinear (XNNPACK on the CPU without autograd, the
// plain op elsewhere). Both compute the same product up to the summation
// order.
func linear(l *nn.Linear, x *torch.Tensor) *torch.Tensor {
	if optimizedBLAS() {
		return torch.Linear(x, l.Weight, l.Bias)
	}
	return torch.FastLinear(x, l.Weight, l.Bias)
}
