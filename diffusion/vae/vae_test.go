package vae

import (
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/dp2osr/dp2o/internal/testutil"
	"github.com/dp2osr/dp2o/torch"
	"github.com/dp2osr/dp2o/torch/nn"
)

// tolerance is the bound |go − ref| ≤ tol + tol·|ref| of the fixture
// comparisons: the README's 1e-5 on the CPU. On CUDA, cuDNN runs float32
// convolutions in TF32 by default (as PyTorch does, allow_tf32), which
// rounds their inputs to 10-bit mantissas: on an H100 the decoder's last
// blocks then differ by up to 1.2e-3 (decode_output 5.9e-4).
func tolerance(t *testing.T) float64 {
	if testutil.Device(t).IsCUDA() {
		return 5e-3
	}
	return 1e-5
}

// recorder is a TapFunc that keeps its own handle of every intermediate, in
// emission order.
type recorder struct {
	names []string
	got   map[string]*torch.Tensor
}

func newRecorder(t *testing.T) *recorder {
	r := &recorder{got: map[string]*torch.Tensor{}}
	t.Cleanup(func() {
		for _, x := range r.got {
			x.Close()
		}
	})
	return r
}

func (r *recorder) tap(name string, t *torch.Tensor) {
	r.names = append(r.names, name)
	r.got[name] = torch.Unscope(t.Alias())
}

func loadTiny(t *testing.T) *Model {
	t.Helper()
	dir := filepath.Dir(testutil.Fixture(t, "sd2/vae/config.json"))
	m, err := Load(dir, torch.Float32, testutil.Device(t))
	require.NoError(t, err)
	t.Cleanup(m.Close)
	return m
}

func onCPU(t *torch.Tensor) *torch.Tensor {
	if t.Device() == torch.CPU {
		return t.Alias()
	}
	return t.ToDevice(torch.CPU)
}

// assertClose compares a (possibly device) tensor with a CPU reference.
func assertClose(t *testing.T, name string, got, want *torch.Tensor) {
	t.Helper()
	g := onCPU(got)
	defer g.Close()
	testutil.AssertClose(t, name, g, want, tolerance(t), tolerance(t))
}

func TestTinyVAEMatchesReference(t *testing.T) {
	testutil.NoLeak(t)
	ref := testutil.Tensors(t, testutil.Fixture(t, "sd2/vae/io.safetensors"))
	m := loadTiny(t)
	dev := testutil.Device(t)
	checked := map[string]bool{"image": true, "decode_input": true, "posterior_generator_seed": true}
	// Intermediates, in forward order, as the taps emit them.
	compareTaps := func(r *recorder) {
		for _, n := range r.names {
			want, ok := ref["inter."+n]
			if !ok {
				continue
			}
			assertClose(t, "inter."+n, r.got[n], want)
			checked["inter."+n] = true
		}
	}

	enc := newRecorder(t)
	m.Tap = enc.tap
	img := ref["image"].ToDevice(dev)
	defer img.Close()
	post, err := m.Encode(img)
	require.NoError(t, err)
	defer post.Close()
	compareTaps(enc)
	for _, c := range []struct {
		key string
		got *torch.Tensor
	}{{"latent_mean", post.Mean}, {"latent_logvar", post.LogVar}, {"latent_std", post.Std}} {
		assertClose(t, c.key, c.got, ref[c.key])
		checked[c.key] = true
	}
	scaled := m.ScaleLatents(post.Mean)
	defer scaled.Close()
	assertClose(t, "latent_mean_scaled", scaled, ref["latent_mean_scaled"])
	checked["latent_mean_scaled"] = true

	// The posterior noise of a fresh CPU generator is bit-exact; the sample
	// drawn with another fresh one matches mean + std·noise.
	seed := uint64(ref["posterior_generator_seed"].ItemInt())
	noise, err := post.Noise(torch.MustGenerator(torch.CPU, seed))
	require.NoError(t, err)
	defer noise.Close()
	nc := onCPU(noise)
	defer nc.Close()
	testutil.AssertEqual(t, "posterior_noise", nc, ref["posterior_noise"])
	checked["posterior_noise"] = true
	sample, err := post.Sample(torch.MustGenerator(torch.CPU, seed))
	require.NoError(t, err)
	defer sample.Close()
	assertClose(t, "posterior_sample", sample, ref["posterior_sample"])
	checked["posterior_sample"] = true
	mode := post.Mode()
	defer mode.Close()
	assertClose(t, "mode = latent_mean", mode, ref["latent_mean"])

	dec := newRecorder(t)
	m.Tap = dec.tap
	z := ref["decode_input"].ToDevice(dev)
	defer z.Close()
	out, err := m.Decode(z)
	require.NoError(t, err)
	defer out.Close()
	compareTaps(dec)
	assertClose(t, "decode_output", out, ref["decode_output"])
	checked["decode_output"] = true

	for k := range ref {
		require.True(t, checked[k], "fixture tensor %s was not compared", k)
	}
}

func TestLegacyAttentionKeysLoad(t *testing.T) {
	testutil.NoLeak(t)
	dir := filepath.Dir(testutil.Fixture(t, "sd2/vae/config.json"))
	cfg, err := LoadConfig(filepath.Join(dir, "config.json"))
	require.NoError(t, err)
	weights := testutil.Tensors(t, filepath.Join(dir, WeightsFile))
	renames := map[string]string{"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}
	old := map[string]*torch.Tensor{}
	n := 0
	for k, v := range weights {
		for cur, dep := range renames {
			if strings.Contains(k, ".attentions.0."+cur+".") {
				k = strings.Replace(k, ".attentions.0."+cur+".", ".attentions.0."+dep+".", 1)
				n++
			}
		}
		old[k] = v
	}
	require.Equal(t, 16, n, "both mid-block attentions renamed")

	// The old names alone do not fit the model …
	_, err = FromSource(nn.MapSource(old), cfg, torch.Float32, torch.CPU)
	require.ErrorContains(t, err, "missing keys")
	require.ErrorContains(t, err, "encoder.mid_block.attentions.0.to_q.weight")
	require.ErrorContains(t, err, "unexpected keys")

	// … and load through LegacyAttentionKeys to the same model.
	legacy, err := FromSource(LegacyAttentionKeys(nn.MapSource(old)), cfg, torch.Float32, torch.CPU)
	require.NoError(t, err)
	defer legacy.Close()
	cur, err := FromSource(nn.MapSource(weights), cfg, torch.Float32, torch.CPU)
	require.NoError(t, err)
	defer cur.Close()
	z := torch.Randn([]int64{1, int64(cfg.LatentChannels), 5, 7}, torch.MustGenerator(torch.CPU, 1), torch.Float32, torch.CPU)
	defer z.Close()
	a, err := legacy.Decode(z)
	require.NoError(t, err)
	defer a.Close()
	b, err := cur.Decode(z)
	require.NoError(t, err)
	defer b.Close()
	testutil.AssertEqual(t, "decode with legacy keys", a, b)
}

func TestConfigDefaults(t *testing.T) {
	// SD2-base's hosted config (diffusers 0.8 era) has no scaling_factor,
	// quant-conv or attention flags.
	c, err := ParseConfig([]byte(`{"_class_name": "AutoencoderKL", "act_fn": "silu",
		"block_out_channels": [128, 256, 512, 512],
		"down_block_types": ["DownEncoderBlock2D","DownEncoderBlock2D","DownEncoderBlock2D","DownEncoderBlock2D"],
		"in_channels": 3, "latent_channels": 4, "layers_per_block": 2, "norm_num_groups": 32,
		"out_channels": 3, "sample_size": 768,
		"up_block_types": ["UpDecoderBlock2D","UpDecoderBlock2D","UpDecoderBlock2D","UpDecoderBlock2D"]}`))
	require.NoError(t, err)
	require.Equal(t, 0.18215, c.ScalingFactor)
	require.True(t, c.UseQuantConv && c.UsePostQuantConv && c.MidBlockAddAttention && c.ForceUpcast)
	require.Equal(t, 768, c.SampleSize.First())
	require.Equal(t, 8, c.DownsampleFactor())
	require.Equal(t, 0.0, c.Shift())

	c, err = ParseConfig([]byte(`{"sample_size": [64, 96], "shift_factor": 0.1159}`))
	require.NoError(t, err)
	require.Equal(t, 64, c.SampleSize.First())
	require.Equal(t, 0.1159, c.Shift())
	require.Equal(t, []int{64}, c.BlockOutChannels)

	_, err = ParseConfig([]byte(`{"block_out_channels": [8, 8], "norm_num_groups": 4}`))
	require.ErrorContains(t, err, "down_block_types")
	_, err = ParseConfig([]byte(`{"act_fn": "mish"}`))
	require.ErrorContains(t, err, "act_fn")
}

func TestBadInputIsAnError(t *testing.T) {
	testutil.NoLeak(t)
	m := loadTiny(t)
	x := torch.Zeros([]int64{1, int64(m.Config.InChannels) + 1, 16, 16}, torch.Float32, testutil.Device(t))
	defer x.Close()
	_, err := m.Encode(x)
	require.ErrorContains(t, err, "want images")
	z := torch.Zeros([]int64{1, int64(m.Config.LatentChannels) + 1, 4, 4}, torch.Float32, testutil.Device(t))
	defer z.Close()
	_, err = m.Decode(z)
	require.ErrorContains(t, err, "want latents")
}
