// Package vgg is torchvision's VGG feature extractor (the `features`
// Sequential of 3×3 convolutions with ReLU and 2×2 max-pools, without batch
// norm), with the activations of chosen layers returned, as perceptual
// metrics such as LPIPS tap them.
package vgg

import (
	"fmt"
	"strconv"
	"strings"

	"github.com/dp2osr/dp2o/torch"
	"github.com/dp2osr/dp2o/torch/nn"
	"github.com/dp2osr/dp2o/vision/internal/blocked"
)

// Pool marks a max-pool in a configuration.
const Pool = -1

// Configurations of torchvision's vgg.py ("cfgs"): output channels of each
// convolution, Pool for a max-pool.
var (
	VGG11 = []int64{64, Pool, 128, Pool, 256, 256, Pool, 512, 512, Pool, 512, 512, Pool}
	VGG13 = []int64{64, 64, Pool, 128, 128, Pool, 256, 256, Pool, 512, 512, Pool, 512, 512, Pool}
	VGG16 = []int64{64, 64, Pool, 128, 128, Pool, 256, 256, 256, Pool, 512, 512, 512, Pool, 512, 512, 512, Pool}
	VGG19 = []int64{64, 64, Pool, 128, 128, Pool, 256, 256, 256, 256, Pool, 512, 512, 512, 512, Pool, 512, 512, 512, 512, Pool}
)

type kind int

const (
	kConv kind = iota
	kReLU
	kPool
)

// Features is vgg*().features.
type Features struct {
	kinds []kind
	// Convs maps a Sequential index to its convolution.
	Convs map[int]*nn.Conv2d
}

// layout lays out a configuration: the kind of each Sequential layer and
// the names of the layers ("conv3_2", "relu3_3", "pool4").
func layout(cfg []int64) ([]kind, map[string]int) {
	var kinds []kind
	names := map[string]int{}
	block, conv := 1, 0
	for _, v := range cfg {
		if v == Pool {
			names[fmt.Sprintf("pool%d", block)] = len(kinds)
			kinds = append(kinds, kPool)
			block, conv = block+1, 0
			continue
		}
		conv++
		names[fmt.Sprintf("conv%d_%d", block, conv)] = len(kinds)
		names[fmt.Sprintf("relu%d_%d", block, conv)] = len(kinds) + 1
		kinds = append(kinds, kConv, kReLU)
	}
	return kinds, names
}

// Index returns the Sequential index of a named layer of cfg: "conv3_2",
// "relu3_3", "pool4" (blocks and convolutions counted from 1), or a decimal
// index.
func Index(cfg []int64, name string) (int, error) {
	kinds, names := layout(cfg)
	if i, ok := names[strings.ToLower(name)]; ok {
		return i, nil
	}
	if i, err := strconv.Atoi(name); err == nil && i >= 0 && i < len(kinds) {
		return i, nil
	}
	return 0, fmt.Errorf("vgg: no layer %q", name)
}

// ConvIndices lists the Sequential indices of cfg that hold weights,
// ascending.
func ConvIndices(cfg []int64) []int {
	kinds, _ := layout(cfg)
	var out []int
	for i, k := range kinds {
		if k == kConv {
			out = append(out, i)
		}
	}
	return out
}

// New requests the convolutions' weights from b, whose prefix is the
// Sequential's ("features" in a torchvision checkpoint): for VGG16
// "0.weight", "0.bias", "2.weight", … "28.bias".
func New(b *nn.Builder, cfg []int64) *Features {
	kinds, _ := layout(cfg)
	f := &Features{Convs: map[int]*nn.Conv2d{}, kinds: kinds}
	in := int64(3)
	ci := 0
	for _, v := range cfg {
		if v == Pool {
			ci++
			continue
		}
		f.Convs[ci] = nn.NewConv2d(b.SubI(ci), in, v, 3, nn.Conv2dConfig{Padding: 1})
		in = v
		ci += 2
	}
	return f
}

// NumLayers is the length of the Sequential.
func (f *Features) NumLayers() int { return len(f.kinds) }

// Forward runs the Sequential on x (N,3,H,W) up to the last index in taps
// and returns the output of each tapped layer, in the order of taps. The
// tensors belong to the caller's scope; the other activations are freed as
// soon as they are consumed, and a ReLU after an untapped convolution runs
// in place (torchvision's ReLU(inplace=True)). Float32 inference on the
// CPU keeps the activations in oneDNN's blocked layout between layers
// (vision/internal/blocked; bit-identical, fewer reorders). Taps outside the Sequential
// panic with a *torch.Error.
func (f *Features) Forward(x *torch.Tensor, taps ...int) []*torch.Tensor {
	last := -1
	tapped := make(map[int]bool, len(taps))
	for _, t := range taps {
		if t < 0 || t >= len(f.kinds) {
			torch.Errorf("vgg", "tap %d outside the %d layers", t, len(f.kinds))
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
		switch f.kinds[i] {
		case kConv:
			next = f.Convs[i].Forward(h)
		case kReLU:
			if tapped[i-1] {
				next = h.Relu()
			} else {
				h.Relu_()
				next = h
			}
		case kPool:
			next = torch.MaxPool2d(h, []int64{2, 2}, []int64{2, 2}, []int64{0, 0})
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
