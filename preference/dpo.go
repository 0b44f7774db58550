package preference

import (
	"errors"
	"fmt"
	"math"

	"github.com/dp2osr/dp2o/diffusion/scheduler"
	flowsched "github.com/dp2osr/dp2o/flow/scheduler"
	"github.com/dp2osr/dp2o/torch"
)

// DefaultBeta is DP²O-SR's DPO β (SPEC §6, both backbones).
const DefaultBeta = 5000

// DPOBatch is one batch of P preference pairs as the loss sees it: the
// policy's and the frozen reference's predictions for the noised winner and
// loser latents, the regression targets (ε for SD2, ε − x0 for FLUX), and
// the HPO weight of each pair. Every tensor is (P, …) except Weight (P,);
// a nil Weight weighs every pair 1.
type DPOBatch struct {
	ModelW, ModelL   *torch.Tensor
	RefW, RefL       *torch.Tensor
	TargetW, TargetL *torch.Tensor
	Weight           *torch.Tensor
}

// DPOResult is the weighted Diffusion-DPO loss of one batch and what
// training logs with it. Loss carries the autograd graph to the policy's
// predictions; the other tensors are detached. The caller closes them
// (Close).
type DPOResult struct {
	// Loss = Σ w·ℓ / Σ w (a weighted mean over the pairs), 0-d.
	Loss *torch.Tensor
	// PerPair is ℓ = −log σ(inside) of each pair.
	PerPair *torch.Tensor
	// Inside = −½·β·((mse_θʷ − mse_θˡ) − (mse_refʷ − mse_refˡ)): the
	// implicit reward margin of each pair.
	Inside *torch.Tensor
	// Per-pair MSEs (mean over every non-batch element) of the policy and
	// the reference against the targets.
	ModelMSEW, ModelMSEL, RefMSEW, RefMSEL *torch.Tensor
	// Accuracy is the implicit preference accuracy: the fraction of pairs
	// with inside > 0 (unweighted).
	Accuracy float64
	// ModelMargin and RefMargin are the mean over the pairs of
	// mse_l − mse_w for the policy and for the reference: how much better
	// each model denoises the winner than the loser (positive = prefers
	// the winner). RewardMargin is the mean of Inside.
	ModelMargin, RefMargin, RewardMargin float64
}

// Close frees the result's tensors.
func (r *DPOResult) Close() {
	if r == nil {
		return
	}
	for _, t := range []*torch.Tensor{r.Loss, r.PerPair, r.Inside, r.ModelMSEW, r.ModelMSEL, r.RefMSEW, r.RefMSEL} {
		t.Close()
	}
}

func checkPairTensor(name string, t *torch.Tensor, like *torch.Tensor) error {
	if t == nil || t.Closed() {
		return fmt.Errorf("preference: dpo: %s is nil or closed", name)
	}
	if t.Dim() < 1 {
		return fmt.Errorf("preference: dpo: %s must have a batch dimension, got a scalar", name)
	}
	if like != nil && fmt.Sprint(t.Shape()) != fmt.Sprint(like.Shape()) {
		return fmt.Errorf("preference: dpo: %s has shape %v, model_w has %v", name, t.Shape(), like.Shape())
	}
	return nil
}

// rowMSE is the mean over every non-batch dimension of (a − b)², in float32.
func rowMSE(a, b *torch.Tensor) *torch.Tensor {
	d := a.To(torch.Float32).Sub(b.To(torch.Float32)).Square()
	if d.Dim() == 1 {
		return d
	}
	dims := make([]int64, d.Dim()-1)
	for i := range dims {
		dims[i] = int64(i + 1)
	}
	return d.MeanDims(dims, false)
}

// DPOLoss is the HPO-weighted Diffusion-DPO loss of SPEC §6 in the form of
// the reference Diffusion-DPO training code (Wallace et al.) that the
// preference fixture pins: per-pair MSEs, inside = −½β·(model_diff −
// ref_diff), ℓ = −logsigmoid(inside), loss = Σ w·ℓ / Σ w. It is the same for
// the ε (SD2) and the velocity (FLUX) form: only the targets differ (see
// NoiseEpsilon and NoiseFlow). The reference predictions are detached. Bad
// input is a returned error.
func DPOLoss(b DPOBatch, beta float64) (res *DPOResult, err error) {
	if math.IsNaN(beta) || math.IsInf(beta, 0) || beta <= 0 {
		return nil, fmt.Errorf("preference: dpo: beta %v must be positive and finite", beta)
	}
	if err := checkPairTensor("model_w", b.ModelW, nil); err != nil {
		return nil, err
	}
	for _, c := range []struct {
		n string
		t *torch.Tensor
	}{{"model_l", b.ModelL}, {"ref_w", b.RefW}, {"ref_l", b.RefL}, {"target_w", b.TargetW}, {"target_l", b.TargetL}} {
		if err := checkPairTensor(c.n, c.t, b.ModelW); err != nil {
			return nil, err
		}
	}
	p := b.ModelW.Size(0)
	if b.Weight != nil && (b.Weight.Dim() != 1 || b.Weight.Size(0) != p) {
		return nil, fmt.Errorf("preference: dpo: weight must be (%d,), one per pair, got %v", p, b.Weight.Shape())
	}
	defer torch.Recover(&err)
	s := torch.NewScope()
	defer s.Close()
	res = &DPOResult{}
	var refW, refL *torch.Tensor
	torch.NoGrad(func() {
		refW, refL = b.RefW.Detach(), b.RefL.Detach()
		res.RefMSEW, res.RefMSEL = rowMSE(refW, b.TargetW.Detach()), rowMSE(refL, b.TargetL.Detach())
	})
	mw, ml := rowMSE(b.ModelW, b.TargetW.Detach()), rowMSE(b.ModelL, b.TargetL.Detach())
	modelDiff := mw.Sub(ml)
	refDiff := res.RefMSEW.Sub(res.RefMSEL)
	inside := modelDiff.Sub(refDiff).MulScalar(-0.5 * beta)
	perPair := inside.LogSigmoid().Neg()
	var w *torch.Tensor
	if b.Weight != nil {
		w = b.Weight.Detach().To(torch.Float32).ToDevice(perPair.Device())
	} else {
		w = perPair.Detach().OnesLike()
	}
	wsum := w.Sum()
	if ws := wsum.Item(); !(ws > 0) || math.IsInf(ws, 0) {
		return nil, fmt.Errorf("preference: dpo: the pair weights sum to %v", ws)
	}
	res.Loss = w.Mul(perPair).Sum().Div(wsum)
	res.PerPair = perPair.Detach()
	res.Inside = inside.Detach()
	res.ModelMSEW, res.ModelMSEL = mw.Detach(), ml.Detach()
	// The four logged statistics come to the host in one copy (one device
	// sync per step, not four).
	var stats []float64
	torch.NoGrad(func() {
		stats = torch.Stack([]*torch.Tensor{
			res.Inside.GtScalar(0).To(torch.Float32).Mean(),
			res.ModelMSEL.Sub(res.ModelMSEW).Mean(),
			res.RefMSEL.Sub(res.RefMSEW).Mean(),
			res.Inside.Mean(),
		}, 0).To(torch.Float64).ToDevice(torch.CPU).Float64s()
	})
	res.Accuracy, res.ModelMargin, res.RefMargin, res.RewardMargin = stats[0], stats[1], stats[2], stats[3]
	s.Keep(res.Loss, res.PerPair, res.Inside, res.ModelMSEW, res.ModelMSEL, res.RefMSEW, res.RefMSEL)
	return res, nil
}

// DPOLossStacked is DPOLoss for predictions and targets in Diffusion-DPO's
// batch layout: 2P rows, the P winners first, then the P losers.
func DPOLossStacked(model, ref, target, weight *torch.Tensor, beta float64) (res *DPOResult, err error) {
	for _, c := range []struct {
		n string
		t *torch.Tensor
	}{{"model", model}, {"ref", ref}, {"target", target}} {
		if c.t == nil || c.t.Closed() || c.t.Dim() < 1 || c.t.Size(0)%2 != 0 {
			return nil, fmt.Errorf("preference: dpo: %s must be a (2P, …) tensor of winners then losers", c.n)
		}
	}
	defer torch.Recover(&err)
	s := torch.NewScope()
	defer s.Close()
	p := model.Size(0) / 2
	half := func(t *torch.Tensor, i int64) *torch.Tensor { return t.Narrow(0, i*p, p) }
	res, err = DPOLoss(DPOBatch{ModelW: half(model, 0), ModelL: half(model, 1), RefW: half(ref, 0), RefL: half(ref, 1),
		TargetW: half(target, 0), TargetL: half(target, 1), Weight: weight}, beta)
	if err != nil {
		return nil, err
	}
	s.Keep(res.Loss, res.PerPair, res.Inside, res.ModelMSEW, res.ModelMSEL, res.RefMSEW, res.RefMSEL)
	return res, nil
}

// NoiseEpsilon noises clean latents for the ε-prediction (SD2) form:
// x_t = √ᾱ_t·x0 + √(1−ᾱ_t)·noise with the DDPM schedule and one int64
// timestep per row; the target is the noise itself. The caller closes
// both tensors.
func NoiseEpsilon(ddpm *scheduler.DDPM, x0, noise, timesteps *torch.Tensor) (xt, target *torch.Tensor, err error) {
	if ddpm == nil {
		return nil, nil, errors.New("preference: nil DDPM schedule")
	}
	if x0 == nil || noise == nil || timesteps == nil || fmt.Sprint(x0.Shape()) != fmt.Sprint(noise.Shape()) {
		return nil, nil, errors.New("preference: x0 and noise must be tensors of one shape")
	}
	if timesteps.Dim() != 1 || timesteps.Size(0) != x0.Size(0) || timesteps.DType() != torch.Int64 {
		return nil, nil, fmt.Errorf("preference: timesteps must be an int64 (%d,) tensor, one per row", x0.Size(0))
	}
	defer torch.Recover(&err)
	return ddpm.AddNoise(x0, noise, timesteps), noise.Alias(), nil
}

// NoiseFlow noises clean latents for the velocity (FLUX) form: x_σ =
// (1−σ)·x0 + σ·noise with one σ per row; the target is noise − x0. The
// caller closes both tensors.
func NoiseFlow(x0, noise *torch.Tensor, sigmas []float32) (xt, target *torch.Tensor, err error) {
	if xt, err = flowsched.Interpolate(x0, noise, sigmas); err != nil {
		return nil, nil, fmt.Errorf("preference: %w", err)
	}
	if target, err = flowsched.VelocityTarget(x0, noise); err != nil {
		xt.Close()
		return nil, nil, fmt.Errorf("preference: %w", err)
	}
	return xt, target, nil
}
