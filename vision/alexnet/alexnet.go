// Package alexnet is torchvision's AlexNet feature extractor (the
// `features` Sequential: five convolutions with ReLU and three max-pools),
// with the activations of chosen layers returned, as perceptual metrics such
// as LPIPS tap them.
package alexnet

import (
	"fmt"

	"github.com/dp2osr/dp2o/torch"
	"github.com/dp2osr/dp2o/torch/nn"
	"github.com/dp2osr/dp2o/vision/internal/blocked"
)

// Indices of torchvision's alexnet().features Sequential. The weights of
// the convolutions are its keys "<index>.weight" and "<index>.bias".
const (
	Conv1 = 0
	ReLU1 = 1
	Pool1 = 2
	Conv2 = 3
	ReLU2 = 4
	Pool2 = 5
	Conv3 = 6
	ReLU3 = 7
	Conv4 = 8
	ReLU4 = 9
	Conv5 = 10
	ReLU5 = 11
	Pool5 = 12
	// NumLayers is the length of the Sequential.
	NumLayers = 13
)

// ReLUTaps are the five ReLU outputs (LPIPS's relu1 … relu5).
var ReLUTaps = []int{ReLU1, ReLU2, ReLU3, ReLU4, ReLU5}

// conv is one convolution of the Sequential.
type conv struct {
	index            int
	in, out, k, s, p int64
}

var convs = []conv{
	{Conv1, 3, 64, 11, 4, 2},
	{Conv2, 64, 192, 5, 1, 2},
	{Conv3, 192, 384, 3, 1, 1},
	{Conv4, 384, 256, 3, 1, 1},
	{Conv5, 256, 256, 3, 1, 1},
}

// ConvIndices lists the Sequential indices that hold weights.
func ConvIndices() []int {
	out := make([]int, len(convs))
	for i, c := range convs {
		out[i] = c.index
	}
	return out
}

// Features is alexnet().features.
type Features struct {
	// Convs maps a Sequential index to its convolution.
	Convs map[int]*nn.Conv2d
}

// New requests the convolutions' weights from b, whose prefix is the
// Sequential's ("features" in a torchvision checkpoint): "0.weight",
// "0.bias", "3.weight", … "10.bias".
func New(b *nn.Builder) *Features {
	f := &Features{Convs: map[int]*nn.Conv2d{}}
	for _, c := range convs {
		f.Convs[c.index] = nn.NewConv2d(b.SubI(c.index), c.in, c.out, c.k, nn.Conv2dConfig{Stride: c.s, Padding: c.p})
	}
	return f
}

// Forward runs the Sequential on x (N,3,H,W) up to the last index in taps
// and returns the output of each tapped layer, in the order of taps. The
// tensors belong to the caller's scope; the other activations are freed as
// soon as they are consumed, and a ReLU after an untapped convolution runs
// in place (torchvision's ReLU(inplace=True)). Float32 inference on the
// CPU keeps the activations in oneDNN's blocked layout between layers
// (vision/internal/blocked; bit-identical, fewer reorders). Taps outside
// [0, NumLayers) panic with a *torch.Error.
func (f *Features) Forward(x *torch.Tensor, taps ...int) []*torch.Tensor {
	last := -1
	tapped := make(map[int]bool, len(taps))
	for _, t := range taps {
		if t < 0 || t >= NumLayers {
			torch.Errorf("alexnet", "tap %d outside the %d layers", t, NumLayers)
		}
		last = max(last, t)
		tapped[t] = true
	}
	outs := make(map[int]*torch.Tensor, len(taps))
	h := x
	mkl := blocked.Use(x)
	if mkl {
		h = x.ToMkldnn()
	}
	for i := 0; i <= last; i++ {
		var next *torch.Tensor
		switch i {
		case Conv1, Conv2, Conv3, Conv4, Conv5:
			next = f.Convs[i].Forward(h)
		case ReLU1, ReLU2, ReLU3, ReLU4, ReLU5:
			if tapped[i-1] {
				next = h.Relu()
			} else {
				h.Relu_()
				next = h
			}
		case Pool1, Pool2, Pool5:
			next = torch.MaxPool2d(h, []int64{3, 3}, []int64{2, 2}, []int64{0, 0})
		default:
			panic(fmt.Sprintf("alexnet: layer %d", i))
		}
		if next != h && h != x && !tapped[i-1] {
			h.Close()
		}
		h = next
		if tapped[i] {
			outs[i] = h
		}
	}
	if mkl {
		for i, t := range outs {
			outs[i] = t.ToDense()
			t.Close()
		}
	}
	res := make([]*torch.Tensor, len(taps))
	for i, t := range taps {
		res[i] = outs[t]
	}
	return res
}

// ToChannelsLast re-lays the convolution kernels out in channels-last
// order (oneDNN's NHWC kernels on the CPU then run without reordering);
// p owns the weights and receives the new tensors.
func (f *Features) ToChannelsLast(p *nn.Params) {
	for _, c := range f.Convs {
		w := c.Weight.ContiguousChannelsLast()
		p.Replace(c.Weight, w)
		c.Weight = w
	}
}
