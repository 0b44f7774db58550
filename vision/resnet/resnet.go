// Package resnet is the ResNet backbone of timm's resnet50 (torchvision-style
// ResNet v1.5: the stride on the 3×3 convolution of each bottleneck) as the
// IQA models use it: features_only, returning the stem activation and the
// four stage outputs.
//
// Inference only: every BatchNorm (eval mode, running statistics) is folded
// into the convolution before it when the model is built, so a block is
// three convolutions with bias.
package resnet

import (
	"fmt"

	"github.com/dp2osr/dp2o/torch"
	"github.com/dp2osr/dp2o/torch/nn"
	"github.com/dp2osr/dp2o/vision/internal/blocked"
)

// Config describes a bottleneck ResNet.
type Config struct {
	Layers [4]int // bottleneck blocks per stage
	BNEps  float64
}

// ResNet50 is timm's resnet50.
var ResNet50 = Config{Layers: [4]int{3, 4, 6, 3}, BNEps: 1e-5}

// Channels are the channel counts of the five feature maps (stem, stages
// 1–4) of a bottleneck ResNet (timm's feature_info.channels()).
func (c Config) Channels() []int64 { return []int64{64, 256, 512, 1024, 2048} }

// ConvBN is a bias-free convolution with the eval-mode BatchNorm after it
// folded in.
//
// On the CPU in float32 (vision/internal/blocked) the folded weight is kept
// only packed in oneDNN's layout, as torch.utils.mkldnn.to_mkldnn packs a
// module's weights once: oneDNN-layout inputs then convolve without a
// weight reorder per call.
type ConvBN struct {
	w, b            *torch.Tensor // w is nil when packed
	packed          *torch.Tensor
	stride, padding []int64
}

// Forward convolves x with the folded weights. A oneDNN-layout x (see
// Features) returns a oneDNN-layout tensor.
func (c *ConvBN) Forward(x *torch.Tensor) *torch.Tensor {
	if x.IsMkldnn() {
		w := c.packed
		if w == nil {
			w = c.w
		}
		return torch.MkldnnConv2d(x, w, c.b, c.padding, c.stride, []int64{1, 1}, 1)
	}
	w := c.w
	if w == nil {
		// A dense input (gradients on, or a non-contiguous batch) on a
		// packed model: the plain weight, reordered back for this call.
		w = c.packed.ToDense()
	}
	return torch.Conv2d(x, w, c.b, c.stride, c.padding, []int64{1, 1}, 1)
}

// pack keeps the weight only in oneDNN's layout when blocked.Pack allows.
// Only ResNet.Features feeds its convolutions oneDNN-layout inputs, so only
// New packs: a ConvBN used on dense inputs (CLIP's ModifiedResNet) keeps its
// dense weight, which would otherwise be reordered back at every call.
func (c *ConvBN) pack() {
	if c.w == nil || c.w.Device().Type == torch.DeviceMeta || !blocked.Pack(c.w) {
		return
	}
	c.packed = torch.Unscope(torch.Scoped(func() *torch.Tensor {
		return c.w.MkldnnReorderConv2dWeight(c.padding, c.stride, []int64{1, 1}, 1)
	}))
	c.w.Close()
	c.w = nil
}

// NewConvBN reads conv.weight (out, in, k, k; no bias) and the BatchNorm bn
// (weight, bias, running_mean, running_var, num_batches_tracked) and folds
// them: w' = w·γ/√(var+eps), b' = β − mean·γ/√(var+eps), computed in
// float32. The convolution pads k/2 on each side.
func NewConvBN(conv, bn *nn.Builder, in, out, k, stride int64, eps float64) *ConvBN {
	w := conv.Get("weight", out, in, k, k)
	gamma, beta := bn.Get("weight", out), bn.Get("bias", out)
	mean, vr := bn.Get("running_mean", out), bn.Get("running_var", out)
	bn.Get("num_batches_tracked") // loaded for a strict key check, unused
	c := &ConvBN{stride: []int64{stride, stride}, padding: []int64{k / 2, k / 2}}
	for _, t := range []*torch.Tensor{w, gamma, beta, mean, vr} {
		if t.Device().Type == torch.DeviceMeta {
			// A missing or mis-shaped key (reported by Finish) or a
			// data-less build: keep placeholders of the right shapes.
			c.w, c.b = torch.Unscope(w.Alias()), torch.Unscope(beta.Alias())
			return c
		}
	}
	s := torch.NewScope()
	defer s.Close()
	f32 := func(t *torch.Tensor) *torch.Tensor { return t.To(torch.Float32) }
	alpha := f32(gamma).Div(f32(vr).AddScalar(eps).Sqrt())
	c.w = torch.Unscope(f32(w).Mul(alpha.View([]int64{out, 1, 1, 1})).To(w.DType()))
	c.b = torch.Unscope(f32(beta).Sub(f32(mean).Mul(alpha)).To(w.DType()))
	// The unfolded tensors are no longer needed: free them now rather
	// than with the builder's Params (Close is idempotent).
	for _, t := range []*torch.Tensor{w, gamma, beta, mean, vr} {
		t.Close()
	}
	return c
}

// Close frees the folded weights.
func (c *ConvBN) Close() {
	c.w.Close()
	c.b.Close()
	c.packed.Close()
}

// bottleneck is timm's Bottleneck (expansion 4).
type bottleneck struct {
	conv1, conv2, conv3 *ConvBN
	down                *ConvBN // nil without a downsample branch
}

func (b *bottleneck) forward(x *torch.Tensor) *torch.Tensor {
	s := torch.NewScope()
	defer s.Close()
	h := b.conv1.Forward(x)
	h.Relu_()
	h = b.conv2.Forward(h)
	h.Relu_()
	h = b.conv3.Forward(h)
	sc := x
	if b.down != nil {
		sc = b.down.Forward(x)
	}
	h = h.Add(sc)
	h.Relu_()
	return s.Keep(h)
}

// ResNet is a features-only bottleneck ResNet.
type ResNet struct {
	cfg    Config
	stem   *ConvBN
	stages [4][]*bottleneck
}

// New builds the backbone from b with timm's keys: conv1, bn1,
// layer{1..4}.{i}.{conv,bn}{1,2,3}, layer{1..4}.0.downsample.{0,1}. The
// classifier (fc) of a full checkpoint is not read.
func New(b *nn.Builder, cfg Config) (*ResNet, error) {
	if cfg.BNEps == 0 {
		return nil, fmt.Errorf("resnet: config without a BatchNorm eps")
	}
	r := &ResNet{cfg: cfg}
	r.stem = NewConvBN(b.Sub("conv1"), b.Sub("bn1"), 3, 64, 7, 2, cfg.BNEps)
	r.stem.pack()
	in := int64(64)
	for st, n := range cfg.Layers {
		width := int64(64) << st
		out := width * 4
		lb := b.Sub(fmt.Sprintf("layer%d", st+1))
		for i := 0; i < n; i++ {
			bb := lb.SubI(i)
			stride := int64(1)
			if i == 0 && st > 0 {
				stride = 2
			}
			blk := &bottleneck{
				conv1: NewConvBN(bb.Sub("conv1"), bb.Sub("bn1"), in, width, 1, 1, cfg.BNEps),
				conv2: NewConvBN(bb.Sub("conv2"), bb.Sub("bn2"), width, width, 3, stride, cfg.BNEps),
				conv3: NewConvBN(bb.Sub("conv3"), bb.Sub("bn3"), width, out, 1, 1, cfg.BNEps),
			}
			if i == 0 {
				blk.down = NewConvBN(bb.Sub("downsample.0"), bb.Sub("downsample.1"), in, out, 1, stride, cfg.BNEps)
			}
			for _, cv := range []*ConvBN{blk.conv1, blk.conv2, blk.conv3, blk.down} {
				if cv != nil {
					cv.pack()
				}
			}
			r.stages[st] = append(r.stages[st], blk)
			in = out
		}
	}
	return r, nil
}

// Features runs the backbone on a normalised (N,3,H,W) batch and returns
// the five feature maps of timm's features_only: act1 (stride 2), layer1
// (4), layer2 (8), layer3 (16), layer4 (32). The tensors belong to the
// caller's scope.
//
// Float32 inference on the CPU runs in oneDNN's blocked layout, as
// torch.utils.mkldnn.to_mkldnn does (vision/internal/blocked): the input is
// reordered once, every convolution takes its weight packed once per
// model, and only the five returned features are reordered back. The
// kernels are oneDNN's, as for the large NCHW convolutions; the 1×1
// convolutions that libtorch would run as a BLAS matrix product at batch 1
// on one thread differ from it in rounding only.
func (r *ResNet) Features(x *torch.Tensor) []*torch.Tensor {
	mkl := blocked.Use(x)
	dense := func(t *torch.Tensor) *torch.Tensor {
		if mkl {
			return t.ToDense()
		}
		return t
	}
	feats := make([]*torch.Tensor, 0, 5)
	h := torch.Scoped(func() *torch.Tensor {
		in := x
		if mkl {
			in = x.ToMkldnn()
		}
		h := r.stem.Forward(in)
		h.Relu_()
		return h
	})
	feats = append(feats, dense(h))
	h = torch.Then(h, func(h *torch.Tensor) *torch.Tensor {
		return torch.MaxPool2d(h, []int64{3, 3}, []int64{2, 2}, []int64{1, 1})
	}, feats[0])
	for _, st := range r.stages {
		for _, blk := range st {
			// A stage's input is the previous stage's output (kept when it
			// is also the returned feature: on the dense path).
			h = torch.Then(h, blk.forward, feats[len(feats)-1])
		}
		feats = append(feats, dense(h))
	}
	if mkl {
		h.Close()
	}
	return feats
}

// Close frees the folded weights (the builder's own parameters are freed
// with its Params).
func (r *ResNet) Close() {
	r.stem.Close()
	for _, st := range r.stages {
		for _, blk := range st {
			blk.conv1.Close()
			blk.conv2.Close()
			blk.conv3.Close()
			if blk.down != nil {
				blk.down.Close()
			}
		}
	}
}
