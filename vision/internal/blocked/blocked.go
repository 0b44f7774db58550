// Package blocked decides when the CPU backbones run their activations in
// oneDNN's blocked layout (to_mkldnn), as torch.utils.mkldnn does: float32
// inference on the CPU, where each NCHW convolution would otherwise reorder
// its input to that layout and its output back. Where libtorch would run
// oneDNN anyway the kernels are the same and so are the values; the 1×1
// convolutions it runs as a BLAS product at batch 1 on one thread come out
// of oneDNN instead, equal up to rounding.
package blocked

import (
	"os"

	"github.com/dp2osr/dp2o/torch"
)

// Use reports whether a pass over x can run in the blocked layout: a
// dense NCHW float32 CPU tensor, gradients off, libtorch built with oneDNN,
// and DP2O_MKLDNN not set to 0.
func Use(x *torch.Tensor) bool {
	return !torch.GradEnabled() && x.IsContiguous() && Pack(x)
}

// Pack reports whether a model built with weight w packs its convolution
// weights for oneDNN when it is built: a float32 CPU weight, libtorch built
// with oneDNN, and DP2O_MKLDNN not set to 0 (Use's conditions on the
// tensor, less the ones that hold only for a pass).
func Pack(w *torch.Tensor) bool {
	return os.Getenv("DP2O_MKLDNN") != "0" && w.Device().Type == torch.DeviceCPU && w.DType() == torch.Float32 &&
		torch.MkldnnAvailable()
}
