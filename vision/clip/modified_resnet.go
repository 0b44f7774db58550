// Package clip holds OpenAI CLIP's networks as the IQA metrics use them
// (pyiqa's clip_model.py): the ModifiedResNet image encoder with its
// attention pool, and the text transformer. Keys are those of the
// published CLIP state dicts ("visual.…", "transformer.…",
// "token_embedding.weight", …).
package clip

import (
	"fmt"

	"github.com/dp2osr/dp2o/torch"
	"github.com/dp2osr/dp2o/torch/nn"
	"github.com/dp2osr/dp2o/vision/resnet"
)

// ResNetConfig is a ModifiedResNet image encoder.
type ResNetConfig struct {
	Layers    [4]int
	Width     int64 // stem width (64 for RN50)
	OutputDim int64 // embedding dimension (1024 for RN50)
	Heads     int64 // attention-pool heads: Width·32/64
	// SpacialDim is input_resolution/32 (7 for RN50 at 224): the size of
	// the attention pool's positional embedding ((SpacialDim²+1, Width·32)).
	SpacialDim int64
}

// RN50 is CLIP's RN50 image encoder.
var RN50 = ResNetConfig{Layers: [4]int{3, 4, 6, 3}, Width: 64, OutputDim: 1024, Heads: 32, SpacialDim: 7}

const bnEps = 1e-5

// bottleneck is CLIP's anti-aliased Bottleneck: the stride is an
// AvgPool2d after conv2 (and before the downsample convolution).
type bottleneck struct {
	conv1, conv2, conv3 *resnet.ConvBN
	down                *resnet.ConvBN
	stride              int64
}

func (b *bottleneck) forward(x *torch.Tensor) *torch.Tensor {
	s := torch.NewScope()
	defer s.Close()
	h := b.conv2.Forward(b.conv1.Forward(x).Relu()).Relu()
	if b.stride > 1 {
		h = avgPool(h, b.stride)
	}
	h = b.conv3.Forward(h)
	id := x
	if b.down != nil {
		if b.stride > 1 {
			id = avgPool(id, b.stride)
		}
		id = b.down.Forward(id)
	}
	return s.Keep(h.Add(id).Relu())
}

// avgPool is nn.AvgPool2d(k) (stride k, no padding, floor).
func avgPool(x *torch.Tensor, k int64) *torch.Tensor {
	return torch.AvgPool2d(x, []int64{k, k}, []int64{k, k}, []int64{0, 0})
}

// AttentionPool is CLIP's AttentionPool2d.
type AttentionPool struct {
	PositionalEmbedding *torch.Tensor
	attn                *nn.MultiheadAttention
}

// ModifiedResNet is CLIP's ResNet image encoder.
type ModifiedResNet struct {
	cfg    ResNetConfig
	stem   [3]*resnet.ConvBN
	stages [4][]*bottleneck
	Pool   *AttentionPool
}

// NewModifiedResNet builds the encoder from b (the "visual" prefix of a CLIP
// state dict).
func NewModifiedResNet(b *nn.Builder, cfg ResNetConfig) (*ModifiedResNet, error) {
	if cfg.Width <= 0 || cfg.Heads <= 0 || (cfg.Width*32)%cfg.Heads != 0 {
		return nil, fmt.Errorf("clip: bad ModifiedResNet config %+v", cfg)
	}
	m := &ModifiedResNet{cfg: cfg}
	w := cfg.Width
	m.stem[0] = resnet.NewConvBN(b.Sub("conv1"), b.Sub("bn1"), 3, w/2, 3, 2, bnEps)
	m.stem[1] = resnet.NewConvBN(b.Sub("conv2"), b.Sub("bn2"), w/2, w/2, 3, 1, bnEps)
	m.stem[2] = resnet.NewConvBN(b.Sub("conv3"), b.Sub("bn3"), w/2, w, 3, 1, bnEps)
	in := w
	for st, n := range cfg.Layers {
		planes := w << st
		stride := int64(1)
		if st > 0 {
			stride = 2
		}
		lb := b.Sub(fmt.Sprintf("layer%d", st+1))
		for i := 0; i < n; i++ {
			bb := lb.SubI(i)
			s := int64(1)
			if i == 0 {
				s = stride
			}
			blk := &bottleneck{
				conv1:  resnet.NewConvBN(bb.Sub("conv1"), bb.Sub("bn1"), in, planes, 1, 1, bnEps),
				conv2:  resnet.NewConvBN(bb.Sub("conv2"), bb.Sub("bn2"), planes, planes, 3, 1, bnEps),
				conv3:  resnet.NewConvBN(bb.Sub("conv3"), bb.Sub("bn3"), planes, planes*4, 1, 1, bnEps),
				stride: s,
			}
			if s > 1 || in != planes*4 {
				blk.down = resnet.NewConvBN(bb.Sub("downsample.0"), bb.Sub("downsample.1"), in, planes*4, 1, 1, bnEps)
			}
			m.stages[st] = append(m.stages[st], blk)
			in = planes * 4
		}
	}
	embed := w * 32
	pb := b.Sub("attnpool")
	m.Pool = &AttentionPool{
		PositionalEmbedding: pb.Get("positional_embedding", cfg.SpacialDim*cfg.SpacialDim+1, embed),
		attn: &nn.MultiheadAttention{
			Separate: true,
			Q:        nn.NewLinear(pb.Sub("q_proj"), embed, embed, true),
			K:        nn.NewLinear(pb.Sub("k_proj"), embed, embed, true),
			V:        nn.NewLinear(pb.Sub("v_proj"), embed, embed, true),
			OutProj:  nn.NewLinear(pb.Sub("c_proj"), embed, cfg.OutputDim, true),
			Dim:      embed, Heads: cfg.Heads,
		},
	}
	return m, nil
}

// Features runs the stem and the four stages on a normalised (N,3,H,W)
// batch and returns the stem output and the stage outputs
// (forward_features). The tensors belong to the caller's scope.
func (m *ModifiedResNet) Features(x *torch.Tensor) []*torch.Tensor {
	h := torch.Scoped(func() *torch.Tensor {
		y := x
		for _, c := range m.stem {
			y = c.Forward(y).Relu()
		}
		return avgPool(y, 2)
	})
	feats := []*torch.Tensor{h}
	for _, st := range m.stages {
		for _, blk := range st {
			// A stage's input is the previous feature, returned: kept.
			h = torch.Then(h, blk.forward, feats[len(feats)-1])
		}
		feats = append(feats, h)
	}
	return feats
}

// Pool2d is the attention pool over a (N, C, H, W) map without positional
// embedding (pyiqa's pos_embedding=False): tokens in row-major order with
// their mean prepended as the query token; it returns that token's output
// (N, OutputDim).
func (p *AttentionPool) Pool2d(x *torch.Tensor) *torch.Tensor {
	n, c := x.Size(0), x.Size(1)
	t := x.Reshape([]int64{n, c, -1}).Permute([]int64{2, 0, 1})
	t = torch.Cat([]*torch.Tensor{t.MeanDims([]int64{0}, true), t}, 0)
	return p.attn.Forward(t, t, t, nil).Select(0, 0)
}

// Close frees the folded convolutions (the other weights belong to the
// builder's Params).
func (m *ModifiedResNet) Close() {
	for _, c := range m.stem {
		c.Close()
	}
	for _, st := range m.stages {
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
