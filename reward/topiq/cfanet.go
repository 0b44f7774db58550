// Package topiq is pyiqa's TOPIQ (CFANet) with its ResNet-50 backbone:
// "topiq_nr" (no-reference, KonIQ weights) and "topiq_fr" (full-reference,
// KADID weights), both higher-is-better. Importing the package registers
// both metrics with reward.Open.
//
// The images are normalised with the ImageNet mean and std and scored at
// their own size (no resize, no crop), as pyiqa's default configurations
// do.
package topiq

import (
	"fmt"
	"slices"

	"github.com/dp2osr/dp2o/torch"
	"github.com/dp2osr/dp2o/torch/nn"
	"github.com/dp2osr/dp2o/vision/resnet"
)

// Config is a CFANet configuration (pyiqa's constructor arguments that
// shape the network).
type Config struct {
	UseRef         bool  // full-reference (topiq_fr) or no-reference (topiq_nr)
	InterDim       int64 // token width
	NumHeads       int64
	NumAttnLayers  int64
	DimFeedforward int64 // min(4·InterDim, 2048)
	NumClass       int64 // 1 (pyiqa's dist_to_mos is then the identity)
	Mean, Std      [3]float64
	Backbone       resnet.Config
}

// imageNetMean and imageNetStd are timm's IMAGENET_DEFAULT_MEAN/STD.
var (
	imageNetMean = [3]float64{0.485, 0.456, 0.406}
	imageNetStd  = [3]float64{0.229, 0.224, 0.225}
)

// NRConfig is pyiqa's "topiq_nr" (CFANet, resnet50, use_ref=False).
var NRConfig = Config{UseRef: false, InterDim: 256, NumHeads: 4, NumAttnLayers: 1, DimFeedforward: 1024,
	NumClass: 1, Mean: imageNetMean, Std: imageNetStd, Backbone: resnet.ResNet50}

// FRConfig is pyiqa's "topiq_fr" (CFANet, resnet50, use_ref=True).
var FRConfig = Config{UseRef: true, InterDim: 256, NumHeads: 4, NumAttnLayers: 1, DimFeedforward: 1024,
	NumClass: 1, Mean: imageNetMean, Std: imageNetStd, Backbone: resnet.ResNet50}

// conv is a k×k convolution with padding k/2.
func conv(b *nn.Builder, in, out, k int64) *nn.Conv2d {
	return nn.NewConv2d(b, in, out, k, nn.Conv2dConfig{Padding: k / 2})
}

// weightBlock is conv1×1(C→64), GELU, conv3×3(64→64), GELU,
// conv3×3(64→1), sigmoid: the per-pixel weight map of both variants
// (GatedConv.weight_blk, or weight_pool[i] of the FR model).
type weightBlock struct{ c0, c2, c4 *nn.Conv2d }

func newWeightBlock(b *nn.Builder, in int64) weightBlock {
	return weightBlock{conv(b.Sub("0"), in, 64, 1), conv(b.Sub("2"), 64, 64, 3), conv(b.Sub("4"), 64, 1, 3)}
}

func (w weightBlock) forward(x *torch.Tensor) *torch.Tensor {
	return torch.Scoped(func() *torch.Tensor {
		return w.c4.Forward(w.c2.Forward(w.c0.Forward(x).Gelu()).Gelu()).Sigmoid()
	})
}

// gatedConv is pyiqa's GatedConv (the NR model's weight_pool[i]):
// splitconv (1×1, C→2C) cut in two halves a and b, gelu(a) times the
// weight map of b. The weight block starts with a 1×1 convolution, and
// two 1×1 convolutions with nothing between them are one: New folds
// weight_blk.0 into b's half of splitconv, so the C channels of b are never
// computed (value is a's half, C→C; gate is the fold, C→64).
type gatedConv struct {
	value, gate *nn.Conv2d // owned by the model
	c2, c4      *nn.Conv2d // weight_blk.2 and .4
}

// newGatedConv reads weight_pool[i] and folds it. The fold is computed in
// float64 and rounded once to the weights' dtype.
func newGatedConv(b *nn.Builder, c int64) *gatedConv {
	split := conv(b.Sub("splitconv"), c, 2*c, 1)
	wb := newWeightBlock(b.Sub("weight_blk"), c)
	g := &gatedConv{c2: wb.c2, c4: wb.c4}
	sw, sb, w0, b0 := split.Weight, split.Bias, wb.c0.Weight, wb.c0.Bias
	if slices.ContainsFunc([]*torch.Tensor{sw, sb, w0, b0}, func(t *torch.Tensor) bool { return t.Device().Type == torch.DeviceMeta }) {
		// A missing or mis-shaped key (reported by Finish) or a data-less
		// build: placeholders of the folded shapes.
		g.value = &nn.Conv2d{Weight: torch.Unscope(sw.Narrow(0, 0, c)), Bias: torch.Unscope(sb.Narrow(0, 0, c))}
		g.gate = &nn.Conv2d{Weight: torch.Unscope(w0.Alias()), Bias: torch.Unscope(b0.Alias())}
	} else {
		dt := sw.DType()
		f64 := func(t *torch.Tensor) *torch.Tensor { return t.To(torch.Float64) }
		own := func(f func() *torch.Tensor) *torch.Tensor { return torch.Unscope(torch.Scoped(f)) }
		g.value = &nn.Conv2d{
			// Clones: a contiguous narrow is a view, which would keep the
			// whole splitconv storage alive.
			Weight: own(func() *torch.Tensor { return sw.Narrow(0, 0, c).Clone() }),
			Bias:   own(func() *torch.Tensor { return sb.Narrow(0, 0, c).Clone() }),
		}
		w064 := func() *torch.Tensor { return f64(w0).View([]int64{-1, c}) }
		g.gate = &nn.Conv2d{
			Weight: own(func() *torch.Tensor {
				return w064().Matmul(f64(sw).Narrow(0, c, c).View([]int64{c, c})).To(dt).View([]int64{-1, c, 1, 1})
			}),
			Bias: own(func() *torch.Tensor {
				return w064().Matmul(f64(sb).Narrow(0, c, c).Unsqueeze(1)).SqueezeDim(1).Add(f64(b0)).To(dt)
			}),
		}
		// The unfolded tensors are no longer needed: free them now rather
		// than with the builder's Params (Close is idempotent).
		for _, t := range []*torch.Tensor{sw, sb, w0, b0} {
			t.Close()
		}
	}
	for _, cv := range []*nn.Conv2d{g.value, g.gate} {
		cv.Stride, cv.Padding, cv.Dilation, cv.Groups = []int64{1, 1}, []int64{0, 0}, []int64{1, 1}, 1
	}
	return g
}

func (g *gatedConv) forward(x *torch.Tensor) *torch.Tensor {
	return torch.Scoped(func() *torch.Tensor {
		w := g.c4.Forward(g.c2.Forward(g.gate.Forward(x).Gelu()).Gelu()).Sigmoid()
		return g.value.Forward(x).Gelu().Mul(w)
	})
}

// close frees the folded weights.
func (g *gatedConv) close() {
	for _, cv := range []*nn.Conv2d{g.value, g.gate} {
		if cv != nil {
			cv.Weight.Close()
			cv.Bias.Close()
		}
	}
}

// Model is CFANet in eval mode.
type Model struct {
	cfg       Config
	backbone  *resnet.ResNet
	gated     []*gatedConv  // NR
	weightFR  []weightBlock // FR
	dimReduce []*nn.Conv2d
	sa        [][]*encoderLayer
	ca        [][]*decoderLayer
	attnPool  *encoderLayer
	head      []any // score_linear: *nn.LayerNorm, *nn.Linear, or gelu (nil)
	hEmb      *torch.Tensor
	wEmb      *torch.Tensor
	mean, std *torch.Tensor
}

// Tap receives named intermediate tensors during Forward (the names of the
// fixtures' io.json without the case prefix: "normalized_input",
// "backbone.dist.0", "gated4", "weight4", "pooled4", "pos_emb", "sa_in4",
// "sa_out4", "ca_out0", "attn_pool", "final_feature"). The tensor is valid
// only during the call.
type Tap func(name string, t *torch.Tensor)

// New builds CFANet from b with pyiqa's state-dict keys.
func New(b *nn.Builder, cfg Config) (m *Model, err error) {
	defer func() {
		if err != nil && m != nil {
			m.Close()
			m = nil
		}
	}()
	defer torch.Recover(&err)
	if cfg.NumClass != 1 || cfg.InterDim%2 != 0 || cfg.NumHeads <= 0 || cfg.InterDim%cfg.NumHeads != 0 {
		return nil, fmt.Errorf("topiq: unsupported config (num_class %d, inter_dim %d, heads %d): one score, an even inter_dim divisible by the heads",
			cfg.NumClass, cfg.InterDim, cfg.NumHeads)
	}
	m = &Model{cfg: cfg}
	if m.backbone, err = resnet.New(b.Sub("semantic_model"), cfg.Backbone); err != nil {
		return nil, err
	}
	chans := cfg.Backbone.Channels()
	mul := int64(1)
	if cfg.UseRef {
		mul = 3
	}
	d := cfg.InterDim
	for i, c := range chans {
		wp := b.Sub("weight_pool").SubI(i)
		if cfg.UseRef {
			m.weightFR = append(m.weightFR, newWeightBlock(wp, c))
		} else {
			m.gated = append(m.gated, newGatedConv(wp, c))
		}
		m.dimReduce = append(m.dimReduce, conv(b.Sub("dim_reduce").SubI(i).Sub("0"), c*mul, d, 1))
		var layers []*encoderLayer
		for l := int64(0); l < cfg.NumAttnLayers; l++ {
			layers = append(layers, newEncoderLayer(b.Sub("sa_attn_blks").SubI(i).Sub("layers").SubI(int(l)), d, cfg.NumHeads, cfg.DimFeedforward))
		}
		m.sa = append(m.sa, layers)
	}
	for i := 0; i < len(chans)-1; i++ {
		var layers []*decoderLayer
		for l := int64(0); l < cfg.NumAttnLayers; l++ {
			layers = append(layers, newDecoderLayer(b.Sub("attn_blks").SubI(i).Sub("layers").SubI(int(l)), d, cfg.NumHeads, cfg.DimFeedforward))
		}
		m.ca = append(m.ca, layers)
	}
	m.attnPool = newEncoderLayer(b.Sub("attn_pool"), d, cfg.NumHeads, cfg.DimFeedforward)
	sl := b.Sub("score_linear")
	m.head = []any{
		nn.NewLayerNorm(sl.Sub("0"), d, 1e-5, true), nn.NewLinear(sl.Sub("1"), d, d, true), nil,
		nn.NewLayerNorm(sl.Sub("3"), d, 1e-5, true), nn.NewLinear(sl.Sub("4"), d, d, true), nil,
		nn.NewLinear(sl.Sub("6"), d, cfg.NumClass, true),
	}
	m.hEmb = b.Get("h_emb", 1, d/2, 32, 1)
	m.wEmb = b.Get("w_emb", 1, d/2, 1, 32)
	dev := b.Device()
	if dev.Type == torch.DeviceMeta {
		dev = torch.CPU
	}
	vec := func(v [3]float64) *torch.Tensor {
		return torch.Unscope(torch.Scoped(func() *torch.Tensor {
			return torch.FromSlice([]float32{float32(v[0]), float32(v[1]), float32(v[2])}, 1, 3, 1, 1).ToDevice(dev)
		}))
	}
	m.mean, m.std = vec(cfg.Mean), vec(cfg.Std)
	return m, nil
}

// Close frees what the model owns beyond the builder's parameters.
func (m *Model) Close() {
	if m.backbone != nil {
		m.backbone.Close()
	}
	for _, g := range m.gated {
		g.close()
	}
	m.mean.Close()
	m.std.Close()
}

// Forward scores a batch: x (and y, the reference, for the FR model) are
// (N,3,H,W) in [0,1]. A reference expanded over the batch (batch stride 0)
// goes through the backbone once. It returns the (N, NumClass) scores in the caller's
// scope; tap (may be nil) sees the intermediates.
func (m *Model) Forward(x, y *torch.Tensor, tap Tap) *torch.Tensor {
	if tap == nil {
		tap = func(string, *torch.Tensor) {}
	}
	s := torch.NewScope()
	defer s.Close()
	dt := m.hEmb.DType()
	x = x.To(dt).Sub(m.mean.To(dt)).Div(m.std.To(dt))
	tap("normalized_input", x)
	dist := m.backbone.Features(x)
	var ref []*torch.Tensor
	if m.cfg.UseRef {
		if y == nil {
			torch.Errorf("topiq", "the full-reference model needs a reference image")
		}
		if n := y.Size(0); n > 1 && y.Strides()[0] == 0 {
			// One reference expanded over the batch (a group of candidates
			// against one image): its backbone runs once.
			y = y.Narrow(0, 0, 1).To(dt).Sub(m.mean.To(dt)).Div(m.std.To(dt))
			for _, f := range m.backbone.Features(y) {
				ref = append(ref, f.Expand([]int64{n, -1, -1, -1}))
			}
		} else {
			y = y.To(dt).Sub(m.mean.To(dt)).Div(m.std.To(dt))
			ref = m.backbone.Features(y)
		}
	}
	for i := range dist {
		tap(fmt.Sprintf("backbone.dist.%d", i), dist[i])
		if ref != nil {
			tap(fmt.Sprintf("backbone.ref.%d", i), ref[i])
		}
	}
	last := len(dist) - 1
	th, tw := dist[last].Size(2), dist[last].Size(3)
	posEmb := torch.Cat([]*torch.Tensor{
		m.hEmb.Repeat([]int64{1, 1, 1, m.wEmb.Size(3)}),
		m.wEmb.Repeat([]int64{1, 1, m.hEmb.Size(2), 1}),
	}, 1)
	tokens := make([]*torch.Tensor, 0, len(dist))
	for i := last; i >= 0; i-- {
		// A scale's full-resolution weighting dies here; only its tokens
		// are kept.
		tok := torch.Scoped(func() *torch.Tensor {
			var feat *torch.Tensor
			if m.cfg.UseRef {
				d, r := dist[i], ref[i]
				diff := torch.Scoped(func() *torch.Tensor { return d.Sub(r).Pow(2).AddScalar(1e-12).Sqrt() })
				feat = torch.Cat([]*torch.Tensor{d, r, diff}, 1)
				w := m.weightFR[i].forward(diff)
				tap(fmt.Sprintf("weight%d", i), w)
				feat = feat.Mul(w)
			} else {
				feat = m.gated[i].forward(dist[i])
				tap(fmt.Sprintf("gated%d", i), feat)
			}
			if feat.Size(2) > th && feat.Size(3) > tw {
				feat = torch.AdaptiveAvgPool2d(feat, []int64{th, tw})
			}
			tap(fmt.Sprintf("pooled%d", i), feat)
			pos := posEmb.Interpolate([]int64{feat.Size(2), feat.Size(3)}, torch.Bicubic, false, false)
			if i == last {
				tap("pos_emb", pos)
			}
			pos = pos.Flatten(2, -1).Permute([]int64{2, 0, 1})
			t := m.dimReduce[i].Forward(feat).Gelu().Flatten(2, -1).Permute([]int64{2, 0, 1}).Add(pos)
			tap(fmt.Sprintf("sa_in%d", i), t)
			for _, l := range m.sa[i] {
				t = l.forward(t)
			}
			return t
		})
		tap(fmt.Sprintf("sa_out%d", i), tok)
		tokens = append(tokens, tok)
	}
	q := tokens[0]
	for i := 0; i < len(tokens)-1; i++ {
		for _, l := range m.ca[i] {
			q = l.forward(q, tokens[i+1])
		}
		tap(fmt.Sprintf("ca_out%d", i), q)
	}
	f := m.attnPool.forward(q)
	tap("attn_pool", f)
	h := f.MeanDims([]int64{0}, false)
	tap("final_feature", h)
	for _, l := range m.head {
		switch l := l.(type) {
		case *nn.LayerNorm:
			h = l.Forward(h)
		case *nn.Linear:
			h = l.Forward(h)
		default:
			h = h.Gelu()
		}
	}
	return s.Keep(h)
}
