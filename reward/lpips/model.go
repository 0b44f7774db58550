// Package lpips is pyiqa's LPIPS (v0.1; Zhang et al. 2018) over torchvision's
// AlexNet ("lpips") or VGG16 ("lpips-vgg"), and their semantic-weighted
// variants ("lpips+", "lpips-vgg+"): the distance of two images as the sum
// over five backbone layers of the spatial mean of a learned 1×1 head on the
// squared difference of channel-normalised features. Lower is more similar.
//
// Importing the package registers the four metrics with reward.Open.
package lpips

import (
	"fmt"

	"github.com/dp2osr/dp2o/torch"
	"github.com/dp2osr/dp2o/torch/nn"
	"github.com/dp2osr/dp2o/vision/alexnet"
	"github.com/dp2osr/dp2o/vision/vgg"
)

// Net is the backbone: "alex" or "vgg".
type Net string

// The backbones pyiqa's LPIPS offers that this package ports.
const (
	Alex Net = "alex"
	VGG  Net = "vgg"
)

// normEps is normalize_tensor's eps, added to the channel norm.
const normEps = 1e-10

// ScalingLayer's buffers (pyiqa's ScalingLayer: float32 constants, not in
// any published file).
var (
	scalingShift = []float32{-0.030, -0.088, -0.188}
	scalingScale = []float32{0.458, 0.448, 0.450}
)

// backbone is a feature extractor returning its tapped layers.
type backbone interface {
	Forward(x *torch.Tensor, taps ...int) []*torch.Tensor
	ToChannelsLast(p *nn.Params)
}

// netSpec describes a backbone: its tapped layers (the last index of each
// of pyiqa's five slices), their names and channels.
type netSpec struct {
	taps     []int
	names    []string
	channels []int64
	convs    []int // Sequential indices holding weights
	build    func(b *nn.Builder) backbone
}

func specOf(n Net) (netSpec, error) {
	switch n {
	case Alex:
		return netSpec{
			taps:     alexnet.ReLUTaps,
			names:    []string{"relu1", "relu2", "relu3", "relu4", "relu5"},
			channels: []int64{64, 192, 384, 256, 256},
			convs:    alexnet.ConvIndices(),
			build:    func(b *nn.Builder) backbone { return alexnet.New(b) },
		}, nil
	case VGG:
		names := []string{"relu1_2", "relu2_2", "relu3_3", "relu4_3", "relu5_3"}
		s := netSpec{names: names, channels: []int64{64, 128, 256, 512, 512}, convs: vgg.ConvIndices(vgg.VGG16)}
		for _, n := range names {
			i, err := vgg.Index(vgg.VGG16, n)
			if err != nil {
				return netSpec{}, err
			}
			s.taps = append(s.taps, i)
		}
		s.build = func(b *nn.Builder) backbone { return vgg.New(b, vgg.VGG16) }
		return s, nil
	}
	return netSpec{}, fmt.Errorf("lpips: unknown net %q (want alex or vgg)", n)
}

// sliceOf returns the number (1-based) of pyiqa's slice that holds the
// Sequential index i: slice k spans (taps[k-2], taps[k-1]].
func (s netSpec) sliceOf(i int) int {
	for k, t := range s.taps {
		if i <= t {
			return k + 1
		}
	}
	return 0
}

// TapFunc receives the intermediates of a forward pass under the names of
// the fixtures: "scaled_ref", "scaled_dist", "feat_ref.<layer>",
// "feat_dist.<layer>", "diff<k>", "lin<k>", "res<k>", "score".
type TapFunc func(name string, t *torch.Tensor)

// Model is pyiqa's LPIPS module in eval mode.
type Model struct {
	Net   Net
	Layer []string // names of the five tapped layers
	// Shift and Scale are the ScalingLayer buffers (1,3,1,1).
	Shift, Scale *torch.Tensor
	// Lins are the five 1×1 heads (1,C,1,1), without bias.
	Lins []*torch.Tensor
	// SemanticWeightLayer ≥ 0 weights each layer's head output by the
	// bilinearly resized reference features of that layer ("lpips+");
	// -1 takes the plain spatial mean.
	SemanticWeightLayer int
	// Tap, when set, receives the intermediates.
	Tap TapFunc
	// Params owns the weights.
	Params *nn.Params
	// ChannelsLast runs the backbone in channels-last memory order (set by
	// UseChannelsLast).
	ChannelsLast bool

	spec     netSpec
	backbone backbone
}

// New requests the weights from b in the canonical layout: the backbone
// under "features.<index>" (torchvision's keys), the heads under
// "lin<k>.model.1.weight", the ScalingLayer under "scaling_layer.shift"
// and "scaling_layer.scale" (optional: pyiqa's constants when absent).
func New(b *nn.Builder, net Net) (m *Model, err error) {
	spec, err := specOf(net)
	if err != nil {
		return nil, err
	}
	defer torch.Recover(&err)
	m = &Model{Net: net, Layer: spec.names, spec: spec, SemanticWeightLayer: -1}
	m.backbone = spec.build(b.Sub("features"))
	for k, c := range spec.channels {
		m.Lins = append(m.Lins, b.Get(fmt.Sprintf("lin%d.model.1.weight", k), 1, c, 1, 1))
	}
	m.Shift = b.GetOptional("scaling_layer.shift", 1, 3, 1, 1)
	m.Scale = b.GetOptional("scaling_layer.scale", 1, 3, 1, 1)
	if m.Shift == nil {
		m.Shift = constant(b, scalingShift)
	}
	if m.Scale == nil {
		m.Scale = constant(b, scalingScale)
	}
	return m, nil
}

// UseChannelsLast re-lays the backbone's kernels out in channels-last
// order and feeds it channels-last inputs: on the CPU, oneDNN's NHWC
// convolutions then skip the activation reorders of the NCHW path (about
// 1.5–2× faster with one thread). The values agree with pyiqa's NCHW path
// to float32 rounding, not bit for bit (another accumulation order inside
// the convolutions: scores within ~1e-7 relative on the fixtures; the
// squared feature differences, which cancel, within 1e-4 of each tensor's
// largest value). reward.OpenOptions.Fast turns it on for CPU scorers.
func (m *Model) UseChannelsLast() (err error) {
	if m.ChannelsLast {
		return nil
	}
	defer torch.Recover(&err)
	m.backbone.ToChannelsLast(m.Params)
	m.ChannelsLast = true
	return nil
}

// constant makes a (1,3,1,1) float32 constant in the builder's dtype and
// device, owned by the builder's params.
func constant(b *nn.Builder, v []float32) *torch.Tensor {
	t := torch.Scoped(func() *torch.Tensor {
		return torch.FromSlice(v, 1, 3, 1, 1).To(b.DType()).ToDevice(b.Device())
	})
	p := b.Params()
	name := fmt.Sprintf("const.%d", len(p.Names))
	p.Names = append(p.Names, name)
	p.Tensors[name] = torch.Unscope(t)
	return t
}

// Close frees the weights. It is idempotent.
func (m *Model) Close() {
	if m == nil || m.Params == nil {
		return
	}
	m.Params.Close()
	m.Params = nil
}

func (m *Model) tap(name string, t *torch.Tensor) {
	if m.Tap != nil {
		m.Tap(name, t)
	}
}

// Forward is LPIPS.forward(in1=dist, in0=ref, normalize=True) of pyiqa:
// dist and ref (N,3,H,W) in [0,1], in the model's dtype and device; it
// returns (N,1). A ref with a batch stride of 0 (one reference expanded to
// N, the candidates of one group) goes through the backbone once.
// Intermediates are freed as soon as they are consumed (Tap callbacks must
// Alias what they keep). The result belongs to the caller's scope; errors
// panic with a *torch.Error.
func (m *Model) Forward(dist, ref *torch.Tensor) *torch.Tensor {
	s := torch.NewScope()
	defer s.Close()
	if ref.Size(0) > 1 && ref.Strides()[0] == 0 {
		ref = ref.Narrow(0, 0, 1)
	}
	x0 := m.scale(ref)
	x1 := m.scale(dist)
	m.tap("scaled_ref", x0)
	m.tap("scaled_dist", x1)
	if m.ChannelsLast {
		x0, x1 = x0.ContiguousChannelsLast(), x1.ContiguousChannelsLast()
	}
	outs0 := m.backbone.Forward(x0, m.spec.taps...)
	x0.Close()
	outs1 := m.backbone.Forward(x1, m.spec.taps...)
	x1.Close()
	var val *torch.Tensor
	for k := range m.spec.taps {
		m.tap("feat_ref."+m.Layer[k], outs0[k])
		m.tap("feat_dist."+m.Layer[k], outs1[k])
		res := torch.Scoped(func() *torch.Tensor { return m.layer(k, outs0, outs1[k]) })
		if k != m.SemanticWeightLayer {
			outs0[k].Close()
		}
		outs1[k].Close()
		m.tap(fmt.Sprintf("res%d", k), res)
		if val == nil {
			val = res
		} else {
			val = val.Add(res)
			res.Close()
		}
	}
	out := val.SqueezeDim(-1).SqueezeDim(-1)
	m.tap("score", out)
	return s.Keep(out)
}

// scale is 2x−1 followed by the ScalingLayer.
func (m *Model) scale(x *torch.Tensor) *torch.Tensor {
	return torch.Scoped(func() *torch.Tensor { return x.MulScalar(2).SubScalar(1).Sub(m.Shift).Div(m.Scale) })
}

// layer is one layer's term: the spatial mean (or the semantic-weighted
// mean) of lin_k((n(f_ref) − n(f_dist))²).
func (m *Model) layer(k int, outs0 []*torch.Tensor, f1 *torch.Tensor) *torch.Tensor {
	n0, n1 := normalize(outs0[k]), normalize(f1)
	d := n0.Sub(n1)
	n0.Close()
	n1.Close()
	diff := d.Pow(2)
	d.Close()
	m.tap(fmt.Sprintf("diff%d", k), diff)
	lin := torch.Conv2d(diff, m.Lins[k], nil, []int64{1, 1}, []int64{0, 0}, []int64{1, 1}, 1)
	diff.Close()
	m.tap(fmt.Sprintf("lin%d", k), lin)
	if m.SemanticWeightLayer < 0 {
		return lin.MeanDims([]int64{2, 3}, true)
	}
	// A broadcast reference (batch 1) broadcasts here too.
	sem := outs0[m.SemanticWeightLayer].Interpolate(lin.Shape()[2:], torch.Bilinear, false, false)
	dims := []int64{1, 2, 3}
	return lin.Mul(sem).SumDims(dims, true).Div(sem.SumDims(dims, true))
}

// normalize is pyiqa's normalize_tensor: f / (sqrt(Σ_c f²) + eps).
func normalize(f *torch.Tensor) *torch.Tensor {
	return torch.Scoped(func() *torch.Tensor {
		sq := f.Pow(2)
		n := sq.SumDims([]int64{1}, true)
		sq.Close()
		return f.Div(n.Sqrt().AddScalar(normEps))
	})
}
