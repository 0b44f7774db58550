package unet

import (
	"fmt"
	"math"
	"slices"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/dp2osr/dp2o/internal/testutil"
	"github.com/dp2osr/dp2o/torch"
	"github.com/dp2osr/dp2o/torch/nn"
)

// loadFixtureControlNet loads the fixture ControlNet from its diffusers
// folder, or from the flat model.safetensors with the configuration
// from_unet derives from the UNet's.
func loadFixtureControlNet(t testing.TB, how string, dev torch.Device) *ControlNet {
	t.Helper()
	var cn *ControlNet
	var err error
	switch how {
	case "diffusers":
		cn, err = LoadControlNet(testutil.Fixture(t, "sd2/controlnet/diffusers"), torch.Float32, dev)
	case "flat":
		// No config: the conditioning layout comes from the file.
		ucfg, err2 := LoadConfig(testutil.Fixture(t, "sd2/unet/config.json"))
		require.NoError(t, err2)
		cn, err = LoadControlNetFileFromUNet(ucfg, nil, testutil.Fixture(t, "sd2/controlnet/model.safetensors"), torch.Float32, dev)
	}
	require.NoError(t, err)
	return cn
}

// controlCond is the fixture's control image as the model takes it:
// u8.float() / 255.
func controlCond(t *testing.T, io map[string]*torch.Tensor, dev torch.Device) *torch.Tensor {
	f := io["controlnet_cond_u8"].To(torch.Float32)
	defer f.Close()
	c := torch.Unscope(f.DivScalar(255))
	t.Cleanup(c.Close)
	return onDev(t, c, dev)
}

func TestControlNetFixtures(t *testing.T) {
	for _, how := range []string{"diffusers", "flat"} {
		for _, cs := range []string{"case0", "case1"} {
			for _, attn := range attentionPaths {
				t.Run(how+"/"+cs+attn.suffix, func(t *testing.T) {
					testutil.NoLeak(t)
					dev := testutil.Device(t)
					cn := loadFixtureControlNet(t, how, dev)
					defer cn.Close()
					attn.use(cn.opts)
					io := testutil.Tensors(t, testutil.Fixture(t, "sd2/controlnet/io.safetensors"))
					scale := io[cs+".conditioning_scale"].Item()
					rec := newTapRecorder(t)
					cn.Tap = rec.tap
					var r *Residuals
					var err error
					torch.NoGrad(func() {
						r, err = cn.TryForward(onDev(t, io["sample"], dev), onDev(t, io["timesteps"], dev),
							onDev(t, io["encoder_hidden_states"], dev), controlCond(t, io, dev), scale)
					})
					require.NoError(t, err)
					defer r.Close()

					// The intermediates do not depend on the scale.
					seen := rec.compare(t, io, "inter.", outAtol)
					for i, d := range r.Down {
						name := fmt.Sprintf("%s.down_block_res_samples.%d", cs, i)
						testutil.AssertClose(t, name, d, io[name], outAtol, rtol)
						seen[name] = true
					}
					testutil.AssertClose(t, cs+".mid_block_res_sample", r.Mid, io[cs+".mid_block_res_sample"], outAtol, rtol)
					seen[cs+".mid_block_res_sample"] = true
					other := "case1."
					if cs == "case1" {
						other = "case0."
					}
					requireCovered(t, io, seen, hasPrefix("sample", "timesteps", "encoder_hidden_states", "controlnet_cond_u8",
						cs+".conditioning_scale", other))
				})
			}
		}
	}
}

// TestControlNetIntoUNet runs the step the pipeline runs: the ControlNet's
// residuals (case0) fed to the UNet reproduce io_controlnet.
func TestControlNetIntoUNet(t *testing.T) {
	testutil.NoLeak(t)
	dev := testutil.Device(t)
	u, err := Load(testutil.Fixture(t, "sd2/unet"), torch.Float32, dev)
	require.NoError(t, err)
	defer u.Close()
	cn := loadFixtureControlNet(t, "diffusers", dev)
	defer cn.Close()
	io := testutil.Tensors(t, testutil.Fixture(t, "sd2/controlnet/io.safetensors"))
	ref := testutil.Tensors(t, testutil.Fixture(t, "sd2/unet/io_controlnet.safetensors"))
	sample, ts, text := onDev(t, io["sample"], dev), onDev(t, io["timesteps"], dev), onDev(t, io["encoder_hidden_states"], dev)
	torch.NoGrad(func() {
		r := cn.Forward(sample, ts, text, controlCond(t, io, dev), 1)
		defer r.Close()
		out := u.Forward(sample, ts, text, r)
		defer out.Close()
		testutil.AssertClose(t, "out_sample", out, ref["out_sample"], outAtol, rtol)
	})
}

func TestControlNetBadInput(t *testing.T) {
	testutil.NoLeak(t)
	dev := testutil.Device(t)
	cn := loadFixtureControlNet(t, "diffusers", dev)
	defer cn.Close()
	io := testutil.Tensors(t, testutil.Fixture(t, "sd2/controlnet/io.safetensors"))
	s := torch.NewScope()
	defer s.Close()
	// The fixture's own inputs, then each made wrong in one way.
	sample := onDev(t, io["sample"], dev)
	text := onDev(t, io["encoder_hidden_states"], dev)
	ts := io["timesteps"]
	cs := io["controlnet_cond_u8"].Shape() // (B, C, H, W)
	b, c, h, w := cs[0], cs[1], cs[2], cs[3]
	for _, tc := range []struct {
		name  string
		shape []int64
		msg   string
	}{
		{"cond size", []int64{b, c, h / 2, w / 2}, "does not match the latents"},
		{"cond channels", []int64{b, c + 1, h, w}, "controlnet_cond must be"},
		{"cond batch", []int64{b + 1, c, h, w}, "controlnet_cond must be"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cond := torch.Zeros(tc.shape, torch.Float32, dev)
			defer cond.Close()
			before := torch.LiveTensors()
			r, err := cn.TryForward(sample, ts, text, cond, 1)
			require.ErrorContains(t, err, tc.msg)
			require.Nil(t, r)
			require.Equal(t, before, torch.LiveTensors())
		})
	}
}

func TestControlNetLoadErrors(t *testing.T) {
	testutil.NoLeak(t)
	ucfg, err := LoadConfig(testutil.Fixture(t, "sd2/unet/config.json"))
	require.NoError(t, err)
	cfg, err := LoadControlNetConfig(testutil.Fixture(t, "sd2/controlnet/diffusers/config.json"))
	require.NoError(t, err)
	flat := testutil.Fixture(t, "sd2/controlnet/model.safetensors")
	shapes := func(key string) []int64 {
		src, err := nn.OpenSafetensors(flat)
		require.NoError(t, err)
		defer src.Close()
		s, _, ok := src.Meta(key)
		require.True(t, ok, key)
		return s
	}

	t.Run("unet weights", func(t *testing.T) {
		_, err := LoadControlNetFile(cfg, testutil.Fixture(t, "sd2/unet/diffusion_pytorch_model.safetensors"), torch.Float32, torch.CPU)
		require.Error(t, err)
		require.ErrorIs(t, err, nn.ErrWeights)
		for _, want := range []string{"missing keys", "controlnet_cond_embedding.conv_in.weight", "controlnet_down_blocks.0.weight",
			"unexpected keys", "up_blocks.0.resnets.0.conv1.weight", "conv_out.weight"} {
			require.Contains(t, err.Error(), want)
		}
		// Inferring the layout from a UNet file names what is missing.
		_, err = LoadControlNetFileFromUNet(ucfg, nil, testutil.Fixture(t, "sd2/unet/diffusion_pytorch_model.safetensors"), torch.Float32, torch.CPU)
		require.ErrorContains(t, err, "not a ControlNet checkpoint")
	})
	t.Run("wrong shapes", func(t *testing.T) {
		// Conditioning widths twice the file's do not fit it.
		in := shapes("controlnet_cond_embedding.conv_in.weight")
		wider := slices.Clone(cfg.ConditioningEmbeddingOutChannels)
		for i := range wider {
			wider[i] *= 2
		}
		bad := ControlNetConfigFromUNet(ucfg, ControlNetOptions{ConditioningEmbeddingOutChannels: wider, ConditioningChannels: cfg.ConditioningChannels})
		_, err := LoadControlNetFile(bad, flat, torch.Float32, torch.CPU)
		require.Error(t, err)
		require.Contains(t, err.Error(), "shape mismatches")
		model := slices.Clone(in)
		model[0] *= 2
		require.Contains(t, err.Error(), fmt.Sprintf("controlnet_cond_embedding.conv_in.weight: checkpoint %v, model %v", in, model))
	})
	t.Run("config disagrees with the file", func(t *testing.T) {
		bad := cfg
		bad.ConditioningEmbeddingOutChannels = slices.Clone(cfg.ConditioningEmbeddingOutChannels)
		bad.ConditioningEmbeddingOutChannels[0]++
		_, err := LoadControlNetFileFromUNet(ucfg, &bad, flat, torch.Float32, torch.CPU)
		require.ErrorContains(t, err, "config.json says")
		require.ErrorContains(t, err, fmt.Sprint(cfg.ConditioningEmbeddingOutChannels))
		// The matching config loads.
		cn, err := LoadControlNetFileFromUNet(ucfg, &cfg, flat, torch.Float32, torch.CPU)
		require.NoError(t, err)
		cn.Close()
	})
	t.Run("one tensor reshaped", func(t *testing.T) {
		src, err := nn.OpenSafetensors(flat)
		require.NoError(t, err)
		defer src.Close()
		m := nn.MapSource{}
		defer m.Close()
		const key = "controlnet_mid_block.weight"
		orig := shapes(key) // (out, in, 1, 1)
		for _, k := range src.Names() {
			x, err := src.Load(k)
			require.NoError(t, err)
			if k == key {
				y := x.Reshape(orig[:2])
				x.Close()
				x = y
			}
			m[k] = torch.Unscope(x)
		}
		_, err = ControlNetFromSource(m, cfg, torch.Float32, torch.CPU)
		require.ErrorContains(t, err, fmt.Sprintf("%s: checkpoint %v, model %v", key, orig[:2], orig))
	})
	t.Run("bad config", func(t *testing.T) {
		_, err := ParseControlNetConfig([]byte(`{"controlnet_conditioning_channel_order": "rbg"}`))
		require.ErrorContains(t, err, "rbg")
		_, err = ParseControlNetConfig([]byte(`{"conditioning_embedding_out_channels": []}`))
		require.ErrorContains(t, err, "empty")
	})
}

// TestFromUNet checks ControlNetModel.from_unet: the copied modules equal
// the UNet's weights (and so the fixture ControlNet's, which was made that
// way), the zero convolutions are zero, the conditioning embedding has
// PyTorch's default init, and a fresh ControlNet leaves the UNet's output
// unchanged.
func TestFromUNet(t *testing.T) {
	testutil.NoLeak(t)
	dev := testutil.Device(t)
	u, err := Load(testutil.Fixture(t, "sd2/unet"), torch.Float32, dev)
	require.NoError(t, err)
	defer u.Close()
	// The fixture ControlNet's conditioning layout, read off its file.
	flat, err := nn.OpenSafetensors(testutil.Fixture(t, "sd2/controlnet/model.safetensors"))
	require.NoError(t, err)
	layout, err := ConditioningLayoutFromSource(flat)
	flat.Close()
	require.NoError(t, err)
	b := nn.NewBuilder(nil, torch.Float32, dev)
	cn, err := FromUNet(u, b, ControlNetOptions{ConditioningEmbeddingOutChannels: layout.Widths,
		ConditioningChannels: layout.Channels, Generator: torch.MustGenerator(torch.CPU, 0)})
	require.NoError(t, err)
	cn.Params, err = b.Finish()
	require.NoError(t, err)
	defer cn.Close()

	ref := testutil.Tensors(t, testutil.Fixture(t, "sd2/controlnet/model.safetensors"))
	require.Len(t, cn.Parameters(), len(ref), "same state dict as the fixture ControlNet")
	for _, p := range cn.Parameters() {
		want, ok := ref[p.Name]
		require.True(t, ok, "unexpected key %s", p.Name)
		require.Equal(t, shapeString(want.Shape()), shapeString(p.Tensor.Shape()), p.Name)
		switch {
		case hasAnyPrefix(p.Name, copiedFromUNet):
			testutil.AssertEqual(t, p.Name, p.Tensor, want)
		case strings.HasPrefix(p.Name, "controlnet_cond_embedding.") && !strings.Contains(p.Name, "conv_out"):
			w := cn.Params.Get(strings.TrimSuffix(strings.TrimSuffix(p.Name, "bias"), "weight") + "weight").Shape()
			fanIn := w[1] * w[2] * w[3]
			bound := 1 / math.Sqrt(float64(fanIn))
			v := p.Tensor.Float64s()
			lo, hi := v[0], v[0]
			for _, x := range v {
				lo, hi = min(lo, x), max(hi, x)
			}
			require.GreaterOrEqual(t, lo, -bound, p.Name)
			require.LessOrEqual(t, hi, bound, p.Name)
			require.Greater(t, hi-lo, bound/2, "%s looks uninitialised", p.Name)
		default:
			z := p.Tensor.Float64s()
			for _, x := range z {
				require.Zero(t, x, "%s should start at zero", p.Name)
			}
		}
	}

	// Zero residuals: the UNet's output is the plain one.
	io := testutil.Tensors(t, testutil.Fixture(t, "sd2/controlnet/io.safetensors"))
	sample, ts, text := onDev(t, io["sample"], dev), onDev(t, io["timesteps"], dev), onDev(t, io["encoder_hidden_states"], dev)
	torch.NoGrad(func() {
		r := cn.Forward(sample, ts, text, controlCond(t, io, dev), 1)
		defer r.Close()
		with := u.Forward(sample, ts, text, r)
		defer with.Close()
		without := u.Forward(sample, ts, text, nil)
		defer without.Close()
		testutil.AssertEqual(t, "UNet output with a fresh ControlNet", with, without)
	})
}
