// Package maniqa is pyiqa's MANIQA with the KonIQ-10k configuration
// ("maniqa": scale 0.8), no-reference, higher-is-better. Importing the
// package registers the metric with reward.Open.
//
// Test-time path of pyiqa: normalise to [-1, 1], upscale (bilinear, by the
// factor 225/min(h,w)) images whose shorter side is at most 224, take 20
// uniform 224×224 crops, run timm's ViT-B/8 and keep blocks 6–9, two
// transposed-attention blocks and a Swin stage twice, and pool the
// per-patch scores of all crops with per-patch weights.
package maniqa

import (
	"fmt"
	"math"

	"github.com/dp2osr/dp2o/torch"
	"github.com/dp2osr/dp2o/torch/nn"
	"github.com/dp2osr/dp2o/vision/swin"
	"github.com/dp2osr/dp2o/vision/vit"
)

// Config is a MANIQA configuration (pyiqa's constructor arguments).
type Config struct {
	EmbedDim   int64
	Patch      int64
	ImgSize    int64
	NumTab     int
	Depths     []int
	NumHeads   []int64
	Window     int64
	DimMLP     int64
	Scale      float64
	TestSample int64
	ViTBlocks  []int // ViT blocks whose outputs are concatenated
	Mean, Std  [3]float64
	NumOutputs int64
	ViTConfig  vit.Config
}

// KonIQ is pyiqa's "maniqa" (train_dataset='koniq', scale 0.8).
var KonIQ = Config{
	EmbedDim: 768, Patch: 8, ImgSize: 224, NumTab: 2, Depths: []int{2, 2}, NumHeads: []int64{4, 4}, Window: 4,
	DimMLP: 768, Scale: 0.8, TestSample: 20, ViTBlocks: []int{6, 7, 8, 9},
	Mean: [3]float64{0.5, 0.5, 0.5}, Std: [3]float64{0.5, 0.5, 0.5}, NumOutputs: 1, ViTConfig: vit.B8,
}

// tab is pyiqa's TABlock: attention over channels of (B, C, N).
type tab struct{ q, k, v *nn.Linear }

func (t *tab) forward(x *torch.Tensor) *torch.Tensor {
	s := torch.NewScope() // the (B, C, C) attention is large: free it per block
	defer s.Close()
	b, c, n := x.Size(0), x.Size(1), x.Size(2)
	q, k, v := t.q.Forward(x), t.k.Forward(x), t.v.Forward(x)
	// pyiqa's order, softmax(q·kᵀ·N^-½)·v: on the CPU without autograd a
	// block of query rows at a time, never the whole (B, C, C) map (755 MiB
	// for tablock1 on 20 crops, twice).
	o := torch.ScaledDotProductAttention(q, k, v, torch.AttentionOpts{Scale: math.Pow(float64(n), -0.5), Math: true})
	// (attn @ v).transpose(1, 2).reshape(B, C, N): the (B, N, C) memory
	// read as (B, C, N).
	return s.Keep(o.Transpose(1, 2).Reshape([]int64{b, c, n}).Add(x))
}

// layer is maniqa_swin's BasicLayer: Swin blocks, then ReLU(conv 3×3).
type layer struct {
	blocks []*swin.Block
	conv   *nn.Conv2d
}

// swinStage is maniqa_swin's SwinTransformer.
type swinStage struct {
	layers []*layer
	scale  float64
	res    int64
}

func newSwinStage(b *nn.Builder, cfg Config, dim int64) (*swinStage, error) {
	res := cfg.ImgSize / cfg.Patch
	s := &swinStage{scale: cfg.Scale, res: res}
	for i, depth := range cfg.Depths {
		lb := b.Sub("layers").SubI(i)
		l := &layer{conv: nn.NewConv2d(lb.Sub("conv"), dim, dim, 3, nn.Conv2dConfig{Padding: 1})}
		for j := 0; j < depth; j++ {
			bb := lb.Sub("blocks").SubI(j)
			shift := int64(0)
			if j%2 == 1 {
				shift = cfg.Window / 2
			}
			blk, err := swin.NewBlock(bb, swin.BlockConfig{
				Dim: dim, Heads: cfg.NumHeads[i], Resolution: [2]int64{res, res}, Window: cfg.Window, Shift: shift,
				MLPHidden: cfg.DimMLP, QKVBias: true, Eps: 1e-5,
			})
			if err != nil {
				return nil, err
			}
			// pyiqa's checkpoint holds the block's constant buffers; they
			// equal what swin.NewBlock computes (checked by the tests).
			bb.Get("attn.relative_position_index", cfg.Window*cfg.Window, cfg.Window*cfg.Window)
			if blk.Shift > 0 {
				nw := (res / blk.Window) * (res / blk.Window)
				bb.Get("attn_mask", nw, cfg.Window*cfg.Window, cfg.Window*cfg.Window)
			}
			l.blocks = append(l.blocks, blk)
		}
		s.layers = append(s.layers, l)
	}
	// The stage's downsample convolution is in the checkpoint but unused.
	b.Get("downsample.weight", dim, dim, 3, 3).Close()
	b.Get("downsample.bias", dim).Close()
	return s, nil
}

// forward maps (B, C, H, W) to (B, C, H, W): x = scale·layer(x) + x per
// layer, on tokens (B, HW, C).
func (s *swinStage) forward(x *torch.Tensor, name string, tap Tap) *torch.Tensor {
	b, c := x.Size(0), x.Size(1)
	t := x.Flatten(2, -1).Transpose(1, 2)
	for i, l := range s.layers {
		// One layer's block outputs and convolution die with its scope.
		t = torch.Then(t, func(prev *torch.Tensor) *torch.Tensor {
			y := prev
			for _, blk := range l.blocks {
				y = blk.Forward(y)
			}
			y = y.Transpose(1, 2).Reshape([]int64{b, c, s.res, s.res})
			y = l.conv.Forward(y).Relu().Flatten(2, -1).Transpose(1, 2)
			tap(fmt.Sprintf("%s.layers.%d", name, i), y)
			return y.MulScalar(s.scale).Add(prev)
		})
	}
	return t.Transpose(1, 2).Reshape([]int64{b, c, s.res, s.res})
}

func (s *swinStage) close() {
	for _, l := range s.layers {
		for _, blk := range l.blocks {
			blk.Close()
		}
	}
}

// Model is MANIQA in eval mode.
type Model struct {
	cfg          Config
	vit          *vit.ViT
	tab1, tab2   []*tab
	conv1, conv2 *nn.Conv2d
	swin1, swin2 *swinStage
	score        [2]*nn.Linear
	weight       [2]*nn.Linear
	mean, std    *torch.Tensor

	// CropsPerPass is how many crops go through the network at once when
	// Forward has no tap; 0 (what New sets) is one on the CPU, where a
	// crop's matrix products already have hundreds of rows (a 512² image:
	// 248 MiB at peak, against 1,489 MiB for its 20 crops at once, in the
	// same time), and an image's crops (Config.TestSample) elsewhere.
	CropsPerPass int
}

// Tap receives named intermediates (the fixture's io.json names without
// the case prefix); t is valid only during the call.
type Tap func(name string, t *torch.Tensor)

// New builds MANIQA from b with pyiqa's state-dict keys.
func New(b *nn.Builder, cfg Config) (m *Model, err error) {
	m = &Model{cfg: cfg}
	defer func() {
		if err != nil {
			m.Close()
			m = nil
		}
	}()
	defer torch.Recover(&err)
	if len(cfg.Depths) != len(cfg.NumHeads) || cfg.NumOutputs != 1 || len(cfg.ViTBlocks) == 0 {
		return nil, fmt.Errorf("maniqa: unsupported config %+v", cfg)
	}
	for _, i := range cfg.ViTBlocks {
		if i < 0 || i >= cfg.ViTConfig.Depth {
			return nil, fmt.Errorf("maniqa: ViT block %d of a %d-block ViT", i, cfg.ViTConfig.Depth)
		}
	}
	if m.vit, err = vit.New(b.Sub("vit"), cfg.ViTConfig); err != nil {
		return nil, err
	}
	m.vit.FreeHead()
	n := (cfg.ImgSize / cfg.Patch) * (cfg.ImgSize / cfg.Patch)
	for i := 0; i < cfg.NumTab; i++ {
		for j, list := range []*[]*tab{&m.tab1, &m.tab2} {
			tb := b.Sub(fmt.Sprintf("tablock%d", j+1)).SubI(i)
			*list = append(*list, &tab{nn.NewLinear(tb.Sub("c_q"), n, n, true), nn.NewLinear(tb.Sub("c_k"), n, n, true), nn.NewLinear(tb.Sub("c_v"), n, n, true)})
		}
	}
	d := cfg.EmbedDim
	m.conv1 = nn.NewConv2d(b.Sub("conv1"), d*int64(len(cfg.ViTBlocks)), d, 1, nn.Conv2dConfig{})
	m.conv2 = nn.NewConv2d(b.Sub("conv2"), d, d/2, 1, nn.Conv2dConfig{})
	if m.swin1, err = newSwinStage(b.Sub("swintransformer1"), cfg, d); err != nil {
		return nil, err
	}
	if m.swin2, err = newSwinStage(b.Sub("swintransformer2"), cfg, d/2); err != nil {
		return nil, err
	}
	m.score = [2]*nn.Linear{nn.NewLinear(b.Sub("fc_score.0"), d/2, d/2, true), nn.NewLinear(b.Sub("fc_score.3"), d/2, 1, true)}
	m.weight = [2]*nn.Linear{nn.NewLinear(b.Sub("fc_weight.0"), d/2, d/2, true), nn.NewLinear(b.Sub("fc_weight.3"), d/2, 1, true)}
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
	if m.swin1 != nil {
		m.swin1.close()
	}
	if m.swin2 != nil {
		m.swin2.close()
	}
	m.mean.Close()
	m.std.Close()
}

// Forward scores a (N,3,H,W) batch in [0,1]: (N,1) in the caller's scope.
//
// No stage mixes crops, so without a tap the crops go through the network
// CropsPerPass at a time and only their per-patch scores and weights are
// kept: the activations are those of a few crops, not of 20 per image
// (with a tap, every intermediate is the whole batch's, as the fixtures
// store them).
func (m *Model) Forward(x *torch.Tensor, tap Tap) *torch.Tensor {
	s := torch.NewScope()
	defer s.Close()
	if tap != nil {
		crops := m.cropBatch(x, tap)
		ps, pw := m.forwardCrops(crops, tap)
		ps, pw = ps.Reshape([]int64{x.Size(0), -1}), pw.Reshape([]int64{x.Size(0), -1})
		tap("per_patch_score", ps)
		tap("per_patch_weight", pw)
		return s.Keep(pool(ps, pw).Unsqueeze(1))
	}
	tap = func(string, *torch.Tensor) {}
	// The crops alone outlive their preprocessing (the normalised and
	// upscaled images).
	crops := torch.Scoped(func() *torch.Tensor { return m.cropBatch(x, tap) })
	n := crops.Size(0)
	step := int64(m.CropsPerPass)
	switch {
	case step <= 0 && crops.Device().Type == torch.DeviceCPU:
		step = 1
	case step <= 0:
		step = m.cfg.TestSample
	}
	step = min(step, n)
	var ps, pw []*torch.Tensor
	for i := int64(0); i < n; i += step {
		// A pass keeps its per-patch scores and weights, nothing else.
		out := torch.ScopedList(func() []*torch.Tensor {
			a, b := m.forwardCrops(crops.Narrow(0, i, min(step, n-i)), tap)
			return []*torch.Tensor{a, b}
		})
		ps, pw = append(ps, out[0]), append(pw, out[1])
	}
	crops.Close()
	cat := func(t []*torch.Tensor) *torch.Tensor {
		if len(t) == 1 {
			return t[0]
		}
		return torch.Cat(t, 0)
	}
	return s.Keep(pool(cat(ps).Reshape([]int64{x.Size(0), -1}), cat(pw).Reshape([]int64{x.Size(0), -1})).Unsqueeze(1))
}

// cropBatch is the test-time preprocessing: normalise, upscale when the
// image is small, and cut the uniform crops ((N·n, 3, crop, crop), the
// crops of each image consecutive).
func (m *Model) cropBatch(x *torch.Tensor, tap Tap) *torch.Tensor {
	cfg := m.cfg
	dt := m.conv1.Weight.DType()
	x = x.To(dt).Sub(m.mean.To(dt)).Div(m.std.To(dt))
	l := cfg.Layout(x.Size(2), x.Size(3))
	if l.Upscaled {
		x = upscale(x, l.ScaleFactor, l.Size)
		tap("upscaled", x)
	}
	crops := cfg.crops(x, l)
	tap("crops", crops)
	return crops
}

// forwardCrops runs the network on a batch of crops, every crop on its own
// (no stage mixes crops), and returns the per-patch scores and weights as
// (crops, patches).
func (m *Model) forwardCrops(crops *torch.Tensor, tap Tap) (ps, pw *torch.Tensor) {
	cfg := m.cfg
	res := cfg.ImgSize / cfg.Patch
	// The ViT block outputs die here: only ViTBlocks are kept, and those
	// until they are concatenated.
	h := torch.Scoped(func() *torch.Tensor {
		blocks := m.vit.Features(crops, cfg.ViTBlocks, func(name string, t *torch.Tensor) { tap("vit."+name, t) })
		var feats []*torch.Tensor
		for _, b := range blocks {
			feats = append(feats, b.Narrow(1, 1, b.Size(1)-1))
		}
		return torch.Cat(feats, 2).Transpose(1, 2) // b (h w) c -> b c (h w)
	})
	tap("stage1_input", h)
	// Each step's input is freed once the step is done (torch.Then).
	for _, t := range m.tab1 {
		h = torch.Then(h, t.forward)
	}
	tap("tablock1", h)
	h = torch.Then(h, func(x *torch.Tensor) *torch.Tensor {
		return m.conv1.Forward(x.Reshape([]int64{x.Size(0), x.Size(1), res, res}))
	})
	tap("conv1", h)
	h = torch.Then(h, func(x *torch.Tensor) *torch.Tensor { return m.swin1.forward(x, "swintransformer1", tap) })
	tap("swintransformer1", h)
	h = torch.Then(h, func(x *torch.Tensor) *torch.Tensor { return x.Flatten(2, -1) })
	for _, t := range m.tab2 {
		h = torch.Then(h, t.forward)
	}
	tap("tablock2", h)
	h = torch.Then(h, func(x *torch.Tensor) *torch.Tensor {
		return m.conv2.Forward(x.Reshape([]int64{x.Size(0), x.Size(1), res, res}))
	})
	tap("conv2", h)
	h = torch.Then(h, func(x *torch.Tensor) *torch.Tensor { return m.swin2.forward(x, "swintransformer2", tap) })
	tap("swintransformer2", h)
	tok := h.Flatten(2, -1).Transpose(1, 2) // b c h w -> b (h w) c
	ps = m.score[1].Forward(m.score[0].Forward(tok).Relu()).Relu().Reshape([]int64{crops.Size(0), -1})
	pw = m.weight[1].Forward(m.weight[0].Forward(tok).Relu()).Sigmoid().Reshape([]int64{crops.Size(0), -1})
	return ps, pw
}

// pool is MANIQA's score: Σ w·s / (Σ w + 1e-8) over all patches of an
// image's crops jointly, (bsz,).
func pool(ps, pw *torch.Tensor) *torch.Tensor {
	return pw.Mul(ps).SumDims([]int64{-1}, false).Div(pw.SumDims([]int64{-1}, false).AddScalar(1e-8))
}
