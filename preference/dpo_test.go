package preference

import (
	"math"
	"strings"
	"testing"

	"github.com/dp2osr/dp2o/diffusion/scheduler"
	"github.com/dp2osr/dp2o/internal/testutil"
	"github.com/dp2osr/dp2o/torch"
)

// Tolerances of fixtures/preference/README.md: relative 1e-5 on losses, 1e-4
// on gradients (float32). A tensor's relative tolerance is taken against
// its largest magnitude.
const (
	tolLossRel = 1e-5
	tolGradRel = 1e-4
)

func assertRel(t *testing.T, name string, got, want *torch.Tensor, rel float64) {
	t.Helper()
	scale := torch.Scoped(func() *torch.Tensor { return want.To(torch.Float64).Abs().Max() }).Item()
	testutil.AssertClose(t, name, got.ToDevice(torch.CPU), want, rel*scale, rel)
}

func TestDPOLossFixture(t *testing.T) {
	testutil.NoLeak(t)
	var meta struct {
		Beta  float64 `json:"beta"`
		Pairs int64   `json:"pairs"`
	}
	readJSON(t, "preference/dpo_loss.json", &meta)
	ts := testutil.Tensors(t, testutil.Fixture(t, "preference/dpo_loss.safetensors"))
	dev := testutil.Device(t)
	cfg, err := scheduler.LoadConfig(testutil.Fixture(t, "sd2/scheduler/scheduler_config.json"))
	if err != nil {
		t.Fatal(err)
	}
	ddpm, err := scheduler.NewDDPM(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer ddpm.Close()
	for _, form := range []string{"eps", "flow"} {
		t.Run(form, func(t *testing.T) {
			s := torch.NewScope()
			defer s.Close()
			get := func(k string) *torch.Tensor {
				v, ok := ts[form+"."+k]
				if !ok {
					t.Fatalf("fixture tensor %s.%s missing", form, k)
				}
				return v
			}
			x0w, x0l, noise := get("x0_w").ToDevice(dev), get("x0_l").ToDevice(dev), get("noise").ToDevice(dev)
			if x0w.Size(0) != meta.Pairs {
				t.Fatalf("%d pairs, json says %d", x0w.Size(0), meta.Pairs)
			}
			// Noising: one timestep (σ) and one noise for both images of a pair.
			var xtw, xtl, tw, tl *torch.Tensor
			var err error
			if form == "eps" {
				tt := get("timestep").ToDevice(dev)
				if xtw, tw, err = NoiseEpsilon(ddpm, x0w, noise, tt); err == nil {
					xtl, tl, err = NoiseEpsilon(ddpm, x0l, noise, tt)
				}
			} else {
				sig := get("sigma").Float32s()
				if xtw, tw, err = NoiseFlow(x0w, noise, sig); err == nil {
					xtl, tl, err = NoiseFlow(x0l, noise, sig)
				}
			}
			if err != nil {
				t.Fatal(err)
			}
			assertRel(t, "xt_w", xtw, get("xt_w"), tolLossRel)
			assertRel(t, "xt_l", xtl, get("xt_l"), tolLossRel)
			assertRel(t, "target_w", tw, get("target_w"), tolLossRel)
			assertRel(t, "target_l", tl, get("target_l"), tolLossRel)

			mw := get("model_w").ToDevice(dev).Clone().SetRequiresGrad(true)
			ml := get("model_l").ToDevice(dev).Clone().SetRequiresGrad(true)
			res, err := DPOLoss(DPOBatch{ModelW: mw, ModelL: ml, RefW: get("ref_w").ToDevice(dev), RefL: get("ref_l").ToDevice(dev),
				TargetW: get("target_w").ToDevice(dev), TargetL: get("target_l").ToDevice(dev), Weight: get("weight").ToDevice(dev)}, meta.Beta)
			if err != nil {
				t.Fatal(err)
			}
			defer res.Close()
			assertRel(t, "inside", res.Inside, get("inside"), tolLossRel)
			assertRel(t, "per_pair_loss", res.PerPair, get("per_pair_loss"), tolLossRel)
			assertRel(t, "loss", res.Loss.Detach(), get("loss"), tolLossRel)
			if acc := get("accuracy").Item(); res.Accuracy != acc {
				t.Fatalf("accuracy %v, want %v", res.Accuracy, acc)
			}
			res.Loss.Backward(nil)
			assertRel(t, "grad_model_w", mw.Grad(), get("grad_model_w"), tolGradRel)
			assertRel(t, "grad_model_l", ml.Grad(), get("grad_model_l"), tolGradRel)

			// The logged margins agree with the per-pair MSEs and inside.
			mean := func(v []float32) float64 {
				s := 0.0
				for _, x := range v {
					s += float64(x)
				}
				return s / float64(len(v))
			}
			in := get("inside").Float32s()
			if d := res.RewardMargin - mean(in); math.Abs(d) > tolLossRel*math.Abs(mean(in))+1e-6 {
				t.Fatalf("reward margin %v, want %v", res.RewardMargin, mean(in))
			}
			// inside = ½β·(model margin − ref margin) per pair, so on average too.
			if d := 0.5*meta.Beta*(res.ModelMargin-res.RefMargin) - res.RewardMargin; math.Abs(d) > 1e-3*math.Abs(res.RewardMargin)+1e-4 {
				t.Fatalf("margins: ½β(%v − %v) ≠ %v", res.ModelMargin, res.RefMargin, res.RewardMargin)
			}

			// The stacked (winners; losers) layout gives the same loss.
			st, err := DPOLossStacked(torch.Cat([]*torch.Tensor{get("model_w"), get("model_l")}, 0), torch.Cat([]*torch.Tensor{get("ref_w"), get("ref_l")}, 0),
				torch.Cat([]*torch.Tensor{get("target_w"), get("target_l")}, 0), get("weight"), meta.Beta)
			if err != nil {
				t.Fatal(err)
			}
			defer st.Close()
			assertRel(t, "stacked loss", st.Loss, get("loss"), tolLossRel)
		})
	}
}

func TestDPOLossBadInput(t *testing.T) {
	testutil.NoLeak(t)
	s := torch.NewScope()
	defer s.Close()
	a := torch.Zeros([]int64{2, 3}, torch.Float32, torch.CPU)
	b := torch.Zeros([]int64{2, 4}, torch.Float32, torch.CPU)
	expect := func(name string, err error, want string) {
		t.Helper()
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Fatalf("%s: error %v, want one mentioning %q", name, err, want)
		}
	}
	_, err := DPOLoss(DPOBatch{ModelW: a, ModelL: a, RefW: a, RefL: b, TargetW: a, TargetL: a}, DefaultBeta)
	expect("shape", err, "ref_l")
	_, err = DPOLoss(DPOBatch{ModelW: a, ModelL: a, RefW: a, RefL: a, TargetW: a}, DefaultBeta)
	expect("nil", err, "target_l")
	_, err = DPOLoss(DPOBatch{ModelW: a, ModelL: a, RefW: a, RefL: a, TargetW: a, TargetL: a}, 0)
	expect("beta", err, "beta")
	_, err = DPOLoss(DPOBatch{ModelW: a, ModelL: a, RefW: a, RefL: a, TargetW: a, TargetL: a, Weight: torch.Zeros([]int64{3}, torch.Float32, torch.CPU)}, DefaultBeta)
	expect("weight shape", err, "weight")
	_, err = DPOLoss(DPOBatch{ModelW: a, ModelL: a, RefW: a, RefL: a, TargetW: a, TargetL: a, Weight: torch.Zeros([]int64{2}, torch.Float32, torch.CPU)}, DefaultBeta)
	expect("zero weights", err, "sum")
	_, err = DPOLossStacked(torch.Zeros([]int64{3, 2}, torch.Float32, torch.CPU), a, a, nil, DefaultBeta)
	expect("odd batch", err, "2P")
}
