package preference

import (
	"fmt"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/dp2osr/dp2o/internal/testutil"
	"github.com/dp2osr/dp2o/torch"
)

// TestReferenceInAutocastDType: under mixed precision a trainer on CUDA
// holds the frozen reference in the autocast dtype, as Diffusion-DPO holds
// its ref_unet, and trains with it (checkpoints still know it by its
// float32 weights); on the CPU (no autocast) it stays
// float32. The cast keeps the reference's values (rounded to bfloat16).
// On the CPU the C-FLUX backbone also runs under a CPU bfloat16 autocast
// region, where a bfloat16 reference predicts what the float32 one does to
// bfloat16 rounding (the matmuls run in bfloat16 either way; only weights
// the autocast keeps in float32, such as the RMS norms', are rounded). An
// SD2 ControlNet cannot run under libtorch 1.13's CPU autocast at all, with
// either reference: it leaves group_norm out of its float32 list (CUDA's
// autocast has it), so bfloat16 activations meet float32 norm weights.
func TestReferenceInAutocastDType(t *testing.T) {
	dev := testutil.Device(t)
	dir := t.TempDir()
	pairs := writeToyPairs(t, dir, 2, 4, 1, 32)
	cfg := DefaultTrainConfig()
	cfg.MixedPrecision = "bf16"
	for _, kind := range []string{KindSD2, KindFlux} {
		t.Run(kind, func(t *testing.T) {
			var bb Backbone
			var tr *Trainer
			var loader *Loader
			if kind == KindSD2 {
				toy := newToySD2(t, pairs, cfg, 2, 1)
				defer toy.close()
				bb, tr, loader = toy.bb, toy.tr, toy.loader
			} else {
				toy := newToyFlux(t, pairs, cfg, 2, 1)
				defer toy.close()
				bb, tr, loader = toy.bb, toy.tr, toy.loader
			}
			testutil.NoLeak(t)
			wantDType := torch.Float32
			if dev.IsCUDA() {
				wantDType = torch.BFloat16
			}
			for _, p := range bb.ReferenceParams() {
				require.Equal(t, wantDType, p.Tensor.DType(), "%s: the reference on %v under bf16 mixed precision", p.Name, dev)
			}
			policy := map[string]*torch.Tensor{}
			for _, p := range bb.PolicyParams() {
				policy[p.Name] = p.Tensor
			}
			s := torch.NewScope()
			defer s.Close()
			for _, p := range bb.ReferenceParams() {
				// The policy is still the initial ControlNet: the reference
				// is its copy, rounded to the reference's dtype.
				testutil.AssertEqual(t, p.Name, p.Tensor, policy[p.Name].To(p.Tensor.DType()))
			}
			b, err := loader.Next()
			require.NoError(t, err)
			defer b.Close()
			if dev.IsCUDA() {
				// Checkpoints know the reference by its float32 weights,
				// those of the initial policy: a run resumes whatever its
				// precision.
				got, err := tr.referenceFingerprint()
				require.NoError(t, err)
				want, err := FingerprintOf(bb.PolicyParams())
				require.NoError(t, err)
				require.Equal(t, want, got)
				st, err := tr.Step([]*Batch{b})
				require.NoError(t, err, "a bf16 mixed-precision step with the bf16 reference")
				t.Logf("step: %+v", *st)
				return
			}
			if kind == KindSD2 {
				require.NoError(t, bb.setReferenceDType(torch.BFloat16))
				for _, p := range bb.ReferenceParams() {
					require.Equal(t, torch.BFloat16, p.Tensor.DType(), p.Name)
					testutil.AssertEqual(t, p.Name, p.Tensor, policy[p.Name].To(torch.BFloat16))
				}
				return
			}
			xt, _, err := bb.noise(b)
			require.NoError(t, err)
			predict := func() *torch.Tensor {
				var out *torch.Tensor
				torch.Autocast(torch.DeviceCPU, torch.BFloat16, func() {
					torch.NoGrad(func() { out, err = bb.predict(true, xt, b) })
				})
				require.NoError(t, err)
				return out.To(torch.Float32)
			}
			want := predict()
			require.NoError(t, bb.setReferenceDType(torch.BFloat16))
			got := predict()
			scale := 0.0
			for _, v := range want.Float64s() {
				scale = max(scale, v, -v)
			}
			maxAbs, _, err := testutil.Diff(got, want, 0, 0)
			require.NoError(t, err)
			t.Logf("max |diff| %.3g of a largest magnitude %.3g (%.2g)", maxAbs, scale, maxAbs/scale)
			// bfloat16 keeps 8 bits: 1/32 of the largest magnitude is 4 to
			// 8 of its ulps there, for the rounding accumulated over the
			// blocks (about 1/100 here); a wrong weight moves it by O(1).
			testutil.AssertCloseToMax(t, fmt.Sprintf("%s reference prediction", kind), got, want, 1.0/32)
		})
	}
}
