package vae

import (
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/dp2osr/dp2o/internal/testutil"
	"github.com/dp2osr/dp2o/torch"
)

// fluxTolerance is the flux/vae README's bound for a float32 port (3e-5 on
// encode/decode outputs and intermediates); on CUDA the TF32 bound of
// tolerance applies.
func fluxTolerance(t *testing.T) float64 {
	if testutil.Device(t).IsCUDA() {
		return tolerance(t)
	}
	return 3e-5
}

// TestFluxVAEMatchesReference runs the 16-channel FLUX VAE configuration
// (shift factor, no quant convs) through this package's AutoencoderKL and
// compares every encode/decode tensor of the flux/vae fixture, the
// intermediates first in forward order.
func TestFluxVAEMatchesReference(t *testing.T) {
	testutil.NoLeak(t)
	dir := testutil.Fixture(t, "flux/vae")
	ref := testutil.Tensors(t, filepath.Join(dir, "io.safetensors"))
	dev := testutil.Device(t)
	m, err := Load(dir, torch.Float32, dev)
	require.NoError(t, err)
	defer m.Close()
	require.Nil(t, m.QuantConv, "use_quant_conv false builds no quant_conv")
	require.Nil(t, m.PostQuantConv, "use_post_quant_conv false builds no post_quant_conv")
	tol := fluxTolerance(t)
	check := func(name string, got *torch.Tensor) {
		t.Helper()
		want, ok := ref[name]
		require.True(t, ok, "fixture tensor %s missing", name)
		g := onCPU(got)
		defer g.Close()
		testutil.AssertClose(t, name, g, want, tol, tol)
	}
	compareTaps := func(r *recorder, want string) {
		n := 0
		for _, name := range r.names {
			if _, ok := ref["inter."+name]; ok {
				check("inter."+name, r.got[name])
				n++
			}
		}
		for k := range ref {
			if strings.HasPrefix(k, "inter."+want+".") {
				_, seen := r.got[strings.TrimPrefix(k, "inter.")]
				require.True(t, seen, "intermediate %s not emitted", k)
			}
		}
		require.Positive(t, n, "no %s intermediates compared", want)
	}

	enc := newRecorder(t)
	m.Tap = enc.tap
	img := ref["image"].ToDevice(dev)
	defer img.Close()
	post, err := m.Encode(img)
	require.NoError(t, err)
	defer post.Close()
	compareTaps(enc, "encoder")
	check("latent_mean", post.Mean)
	check("latent_logvar", post.LogVar)
	check("latent_std", post.Std)

	// The posterior sample for the fixture's ε, then the control latents
	// the FLUX pipeline packs: (sample − shift)·scale.
	eps := ref["posterior_noise"].ToDevice(dev)
	defer eps.Close()
	sample := torch.Scoped(func() *torch.Tensor { return post.Mean.Add(post.Std.Mul(eps)) })
	defer sample.Close()
	check("posterior_sample", sample)
	ctrl := m.ScaleLatents(ref["posterior_sample"])
	defer ctrl.Close()
	check("control_latents", ctrl)

	// Decode, and the pipeline's map from transformer space: z/scale + shift.
	dec := newRecorder(t)
	m.Tap = dec.tap
	z := ref["decode_input"].ToDevice(dev)
	defer z.Close()
	out, err := m.Decode(z)
	require.NoError(t, err)
	defer out.Close()
	compareTaps(dec, "decoder")
	check("decode_output", out)
	un := m.UnscaleLatents(ref["decode_input"])
	defer un.Close()
	check("decode_input_from_transformer_space", un)
}
