// Package afine is pyiqa's A-FINE (Chen et al., CVPR 2025): "afine_fr" (the
// fidelity term of a distorted image against its reference) and "afine_nr"
// (the naturalness term of an image), both lower-is-better, computed by one
// network on a fine-tuned CLIP ViT-B/32. Importing the package registers
// both metrics with reward.Open.
//
// Images are normalised with CLIP's mean and std and encoded at their own
// size, which must be a multiple of 32 on both sides (pyiqa asserts it).
// pyiqa normalises its caller's tensor in place; this port leaves the input
// untouched.
package afine

import (
	"fmt"
	"math"

	"github.com/dp2osr/dp2o/torch"
	"github.com/dp2osr/dp2o/torch/nn"
	"github.com/dp2osr/dp2o/vision/clip"
)

// Calibration constants of pyiqa's AFINE constructor: both logistic maps
// go from yita2 to yita1; the fidelity map clamps its learned yita3/yita4.
const (
	yita1, yita2         = 2.0, -2.0
	fr3Lo, fr3Hi         = 0.05, 0.95
	fr4Lo, fr4Hi         = 0.01, 0.70
	finalY1, finalY2     = 100.0, 0.0
	finalY3, finalY4     = -1.9710, -2.3734
	statEps              = 1e-10
	levelPixels          = 3
	levelFeatures        = 768
	qheadHidden          = 128
	numFeatureLevels     = 12
	calibrationSwitchExp = 10.0
)

// chns are the channel counts of the 13 levels (pixels, then the 12 ViT
// blocks).
func chns() []int64 {
	out := []int64{levelPixels}
	for i := 0; i < numFeatureLevels; i++ {
		out = append(out, levelFeatures)
	}
	return out
}

// Model is A-FINE in eval mode.
type Model struct {
	vit         *clip.ViT
	text        *clip.Text // loaded (the checkpoint holds it), never run
	mean, std   *torch.Tensor
	qMean, qStd *torch.Tensor // net_qhead buffers
	dMean, dStd *torch.Tensor // net_dhead buffers
	projFeat    *nn.Linear
	head0       *nn.Linear
	head2       *nn.Linear
	alpha, beta *torch.Tensor
	fr3, fr4    *torch.Tensor
	nr3, nr4    *torch.Tensor
	k           *torch.Tensor
}

// Tap receives named intermediates (the fixture's io.json names without the
// "fr.<case>." / "nr.<case>." prefix, e.g. "dist.block3", "ref.natural",
// "fidelity"); t is valid only during the call.
type Tap func(name string, t *torch.Tensor)

// New builds the model from b with the manifest's keys: clip_model.*,
// net_qhead.*, net_dhead.*, net_scale_fr.*, net_scale_nr.*, adapter.k.
func New(b *nn.Builder) (m *Model, err error) {
	defer torch.Recover(&err)
	m = &Model{}
	cb := b.Sub("clip_model")
	if m.vit, err = clip.NewViT(cb.Sub("visual"), clip.ViTB32); err != nil {
		return nil, err
	}
	if m.text, err = clip.NewText(cb, clip.TextConfig{ContextLength: 77, VocabSize: 49408, Width: 512, Heads: 8, Layers: 12, EmbedDim: clip.ViTB32.OutputDim}); err != nil {
		return nil, err
	}
	m.text.Free()
	cb.Get("logit_scale").Close()
	q, d := b.Sub("net_qhead"), b.Sub("net_dhead")
	m.qMean, m.qStd = q.Get("mean", 1, 3, 1, 1), q.Get("std", 1, 3, 1, 1)
	m.dMean, m.dStd = d.Get("mean", 1, 3, 1, 1), d.Get("std", 1, 3, 1, 1)
	var total int64
	for _, c := range chns() {
		total += c
	}
	m.projFeat = nn.NewLinear(q.Sub("proj_feat"), 2*levelFeatures, qheadHidden, true)
	in := 2*levelPixels + qheadHidden*numFeatureLevels
	m.head0 = nn.NewLinear(q.Sub("proj_head.0"), int64(in), 6*qheadHidden, true)
	m.head2 = nn.NewLinear(q.Sub("proj_head.2"), 6*qheadHidden, 1, true)
	m.alpha, m.beta = d.Get("alpha", 1, 1, total), d.Get("beta", 1, 1, total)
	m.fr3, m.fr4 = b.Get("net_scale_fr.yita3"), b.Get("net_scale_fr.yita4")
	m.nr3, m.nr4 = b.Get("net_scale_nr.yita3"), b.Get("net_scale_nr.yita4")
	m.k = b.Get("adapter.k")
	dev := b.Device()
	if dev.Type == torch.DeviceMeta {
		dev = torch.CPU
	}
	m.mean, m.std = vec3(clipMean, dev), vec3(clipStd, dev)
	return m, nil
}

// clipMean and clipStd are OpenAI CLIP's normalisation.
var (
	clipMean = [3]float64{0.48145466, 0.4578275, 0.40821073}
	clipStd  = [3]float64{0.26862954, 0.26130258, 0.27577711}
)

// vec3 is a (3) float32 tensor (torchvision normalize's mean/std).
func vec3(v [3]float64, dev torch.Device) *torch.Tensor {
	return torch.Unscope(torch.Scoped(func() *torch.Tensor {
		return torch.FromSlice([]float32{float32(v[0]), float32(v[1]), float32(v[2])}, 3, 1, 1).ToDevice(dev)
	}))
}

// Close frees what the model owns beyond the builder's parameters.
func (m *Model) Close() {
	m.mean.Close()
	m.std.Close()
}

// branch is one image through the CLIP tower.
type branch struct {
	x     *torch.Tensor   // normalised image
	feats []*torch.Tensor // h_1..h_12
}

func (m *Model) encode(img *torch.Tensor, prefix string, tap Tap) branch {
	dt := m.alpha.DType()
	x := img.To(dt).Sub(m.mean.To(dt)).Div(m.std.To(dt))
	tap(prefix+"normalized_input", x)
	_, feats := m.vit.Forward(x, func(name string, t *torch.Tensor) { tap(prefix+name, t) })
	return branch{x: x, feats: feats}
}

// split cuts a branch of two stacked batches into the first n images and
// the rest (views).
func (m *Model) split(b branch, n int64) (first, rest branch) {
	first.x, rest.x = b.x.Narrow(0, 0, n), b.x.Narrow(0, n, b.x.Size(0)-n)
	for _, f := range b.feats {
		first.feats = append(first.feats, f.Narrow(0, 0, n))
		rest.feats = append(rest.feats, f.Narrow(0, n, f.Size(0)-n))
	}
	return first, rest
}

// levels is the number of feature levels of a branch.
func (b branch) levels() int { return len(b.feats) + 1 }

// level returns feature level k of a branch: the de-normalised pixels
// (N, HW, 3) for k = 0, else relu(h_k).
func (b branch) level(k int, mean, std *torch.Tensor) *torch.Tensor {
	if k == 0 {
		return b.x.Mul(std).Add(mean).Flatten(2, -1).Permute([]int64{0, 2, 1})
	}
	return b.feats[k-1].Relu()
}

// meanVar is the token mean and population variance of (N, T, C), both
// (N, 1, C).
func meanVar(f *torch.Tensor) (*torch.Tensor, *torch.Tensor) {
	mu := f.MeanDims([]int64{1}, true)
	return mu, f.Sub(mu).Pow(2).MeanDims([]int64{1}, true)
}

// natural is AFINEQhead: the raw naturalness (N,1).
func (m *Model) natural(b branch, prefix string, tap Tap) *torch.Tensor {
	var parts []*torch.Tensor
	for k := range b.levels() {
		// A level and its statistics die here, before the next is made.
		parts = append(parts, torch.Scoped(func() *torch.Tensor {
			mu, vr := meanVar(b.level(k, m.qMean, m.qStd))
			c := torch.Cat([]*torch.Tensor{mu.Flatten(1, -1), vr.Flatten(1, -1)}, 1)
			if k != 0 {
				c = m.projFeat.Forward(c)
			}
			return c
		}))
	}
	feat := torch.Cat(parts, 1)
	tap(prefix+"qhead_feature", feat)
	n := m.head2.Forward(m.head0.Forward(feat).Gelu())
	tap(prefix+"natural", n)
	return n
}

// fidelity is AFINEDhead: 1 − Σ_k [Σ a_k·S1_k + Σ b_k·S2_k], (N,1).
func (m *Model) fidelity(d, r branch, tap Tap) *torch.Tensor {
	a, bb := softplus(m.alpha), softplus(m.beta)
	wsum := a.Sum().Add(bb.Sum()).AddScalar(statEps)
	as := a.Div(wsum).SplitSizes(chns(), 2)
	bs := bb.Div(wsum).SplitSizes(chns(), 2)
	var dist1, dist2 *torch.Tensor
	var s1s, s2s []*torch.Tensor
	for k := range d.levels() {
		// Both branches' level k and its statistics die here.
		ts := torch.ScopedList(func() []*torch.Tensor {
			lx, ly := d.level(k, m.dMean, m.dStd), r.level(k, m.dMean, m.dStd)
			xm, ym := lx.MeanDims([]int64{1}, true), ly.MeanDims([]int64{1}, true)
			s1 := xm.Mul(ym).MulScalar(2).AddScalar(statEps).Div(xm.Pow(2).Add(ym.Pow(2)).AddScalar(statEps))
			t1 := as[k].Mul(s1).SumDims([]int64{2}, true)
			xv := lx.Sub(xm).Pow(2).MeanDims([]int64{1}, true)
			yv := ly.Sub(ym).Pow(2).MeanDims([]int64{1}, true)
			cov := lx.Mul(ly).MeanDims([]int64{1}, true).Sub(xm.Mul(ym))
			s2 := cov.MulScalar(2).AddScalar(statEps).Div(xv.Add(yv).AddScalar(statEps))
			return []*torch.Tensor{t1, bs[k].Mul(s2).SumDims([]int64{2}, true)}
		})
		t1, t2 := ts[0], ts[1]
		if k == 0 {
			dist1, dist2 = t1, t2
		} else {
			dist1, dist2 = dist1.Add(t1), dist2.Add(t2)
		}
		s1s, s2s = append(s1s, t1.Reshape([]int64{-1})), append(s2s, t2.Reshape([]int64{-1}))
	}
	if d.x.Size(0) == 1 {
		tap("dhead_level_S1", torch.Cat(s1s, 0))
		tap("dhead_level_S2", torch.Cat(s2s, 0))
	}
	f := dist1.Add(dist2).SqueezeDim(2).RSub(1)
	tap("fidelity", f)
	return f
}

// logistic is pyiqa's calibration d = (y1−y2)/(1+exp(e)) + y2 with
// e = −(x − y3)/(|y4| + 1e-10), or the algebraically equal
// (y1−y2)·exp(−e)/(1+exp(−e)) + y2 where e ≥ 10 (per element: pyiqa
// branches on its single element).
func logistic(x, y3, y4 *torch.Tensor, y1, y2 float64) *torch.Tensor {
	e := x.Sub(y3).MulScalar(-1).Div(y4.Abs().AddScalar(statEps))
	return logisticOf(e, y1, y2)
}

func logisticOf(e *torch.Tensor, y1, y2 float64) *torch.Tensor {
	small := e.Exp().AddScalar(1).Reciprocal().MulScalar(y1 - y2).AddScalar(y2)
	ne := e.MulScalar(-1).Exp()
	large := ne.MulScalar(y1 - y2).Div(ne.AddScalar(1)).AddScalar(y2)
	// e ≥ 10, false for NaN as in Python.
	return torch.Where(e.GtScalar(calibrationSwitchExp), large, torch.Where(e.EqScalar(calibrationSwitchExp), large, small))
}

// softplus is F.softplus (beta 1, threshold 20).
func softplus(x *torch.Tensor) *torch.Tensor {
	return torch.Where(x.GtScalar(20), x, x.Exp().Log1p())
}

// naturalScale is AFINENLM_NR_Fit.
func (m *Model) naturalScale(n *torch.Tensor) *torch.Tensor {
	return logistic(n, m.nr3, m.nr4, yita1, yita2)
}

// fidelityScale is AFINENLM_FR_Fit_with_limit (learned yita3/yita4 clamped).
func (m *Model) fidelityScale(f *torch.Tensor) *torch.Tensor {
	return logistic(f, m.fr3.Clamp(fr3Lo, fr3Hi), m.fr4.Clamp(fr4Lo, fr4Hi), yita1, yita2)
}

// ForwardNR returns afine_nr of a (N,3,H,W) batch in [0,1]: (N,1) in the
// caller's scope.
func (m *Model) ForwardNR(x *torch.Tensor, tap Tap) *torch.Tensor {
	if tap == nil {
		tap = func(string, *torch.Tensor) {}
	}
	s := torch.NewScope()
	defer s.Close()
	b := m.encode(x, "", tap)
	ns := m.naturalScale(m.natural(b, "", tap))
	tap("natural_scale", ns)
	return s.Keep(ns)
}

// ForwardFR returns afine_fr of dist against ref ((N,3,H,W) in [0,1]):
// (N,1) in the caller's scope. A reference expanded over the batch (batch
// stride 0) is encoded once. Without a tap, the distorted images and the
// references (or the one reference) go through CLIP as one batch: a
// 320×256 image is 81 ViT-B/32 tokens, and matrix products of twice the
// rows run faster per row (batch 1: 355–384 against 424–453 ms a pair),
// for a somewhat higher peak (a 512² pair: 98–135 against 77 MiB). It also
// taps the combined scores pyiqa computes on the way ("afine_all",
// "afine_all_scale").
func (m *Model) ForwardFR(dist, ref *torch.Tensor, tap Tap) *torch.Tensor {
	tapped := tap != nil
	if tap == nil {
		tap = func(string, *torch.Tensor) {}
	}
	s := torch.NewScope()
	defer s.Close()
	var d, r branch
	var nr *torch.Tensor
	switch n := ref.Size(0); {
	case n > 1 && ref.Strides()[0] == 0:
		// One reference expanded over the batch: its branch runs once
		// (without a tap, as one more image of the distorted batch).
		if tapped {
			d = m.encode(dist, "dist.", tap)
			r = m.encode(ref.Narrow(0, 0, 1), "ref.", tap)
		} else {
			d, r = m.split(m.encode(torch.Cat([]*torch.Tensor{dist, ref.Narrow(0, 0, 1)}, 0), "", tap), dist.Size(0))
		}
		nr = m.naturalScale(m.natural(r, "ref.", tap)).Expand([]int64{n, -1})
		r.x = r.x.Expand([]int64{n, -1, -1, -1})
		for i, f := range r.feats {
			r.feats[i] = f.Expand([]int64{n, -1, -1})
		}
	case !tapped:
		d, r = m.split(m.encode(torch.Cat([]*torch.Tensor{dist, ref}, 0), "", tap), dist.Size(0))
		nr = m.naturalScale(m.natural(r, "ref.", tap))
	default:
		d = m.encode(dist, "dist.", tap)
		r = m.encode(ref, "ref.", tap)
		nr = m.naturalScale(m.natural(r, "ref.", tap))
	}
	nd := m.naturalScale(m.natural(d, "dist.", tap))
	tap("dist.natural_scale", nd)
	tap("ref.natural_scale", nr)
	fs := m.fidelityScale(m.fidelity(d, r, tap))
	tap("fidelity_scale", fs)
	// AFINELearnLambda and scale_finalscore (pyiqa's afine_all metrics).
	all := softplus(m.k).Mul(nr.Sub(nd)).Exp().Mul(nd).Add(fs)
	tap("afine_all", all)
	e := all.SubScalar(finalY3).MulScalar(-1).DivScalar(math.Abs(finalY4) + statEps)
	tap("afine_all_scale", logisticOf(e, finalY1, finalY2))
	return s.Keep(fs)
}

// checkSize is pyiqa's assertion on the input size.
func checkSize(shape []int64, patch int64) error {
	if shape[2]%patch != 0 || shape[3]%patch != 0 {
		return fmt.Errorf("image of %d×%d: A-FINE needs a height and width divisible by %d", shape[2], shape[3], patch)
	}
	return nil
}
