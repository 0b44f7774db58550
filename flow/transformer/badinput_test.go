package transformer

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/dp2osr/dp2o/internal/testutil"
	"github.com/dp2osr/dp2o/torch"
	"github.com/dp2osr/dp2o/torch/nn"
	"github.com/dp2osr/dp2o/torch/safetensors"
)

// rawTensors reads every tensor of a safetensors file as raw entries.
func rawTensors(t *testing.T, path string) []safetensors.Tensor {
	t.Helper()
	f, err := safetensors.Open(path)
	require.NoError(t, err)
	defer f.Close()
	var out []safetensors.Tensor
	for _, n := range f.Names() {
		info, _ := f.Info(n)
		data, err := f.Data(n)
		require.NoError(t, err)
		out = append(out, safetensors.Tensor{Name: n, DType: info.DType, Shape: info.Shape, Data: append([]byte(nil), data...)})
	}
	return out
}

// writeSharded writes the fixture transformer as a two-shard diffusers
// folder and returns it with the name of the second shard.
func writeSharded(t *testing.T) (dir, second string) {
	t.Helper()
	dir = t.TempDir()
	cfg, err := os.ReadFile(testutil.Fixture(t, "flux/transformer/config.json"))
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(filepath.Join(dir, "config.json"), cfg, 0o644))
	all := rawTensors(t, testutil.Fixture(t, "flux/transformer/"+WeightsFile))
	shards := []string{"diffusion_pytorch_model-00001-of-00002.safetensors", "diffusion_pytorch_model-00002-of-00002.safetensors"}
	parts := [][]safetensors.Tensor{all[:len(all)/2], all[len(all)/2:]}
	wm := map[string]string{}
	for i, p := range parts {
		require.NoError(t, safetensors.Save(filepath.Join(dir, shards[i]), p, nil))
		for _, x := range p {
			wm[x.Name] = shards[i]
		}
	}
	idx, err := json.Marshal(map[string]any{"metadata": map[string]any{}, "weight_map": wm})
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(filepath.Join(dir, WeightsFile+".index.json"), idx, 0o644))
	return dir, shards[1]
}

// TestShardedFolder loads the transformer from shards (same output as the
// single file) and fails clearly when a shard is missing.
func TestShardedFolder(t *testing.T) {
	testutil.NoLeak(t)
	dir, second := writeSharded(t)
	ref := testutil.Tensors(t, testutil.Fixture(t, "flux/transformer/io.safetensors"))
	single := loadFixtureFlux(t)
	sharded, err := LoadFlux(dir, torch.Float32, torch.CPU)
	require.NoError(t, err)
	defer sharded.Close()
	var a, b *torch.Tensor
	torch.NoGrad(func() {
		a, err = single.Forward(input(ref))
		require.NoError(t, err)
		b, err = sharded.Forward(input(ref))
		require.NoError(t, err)
	})
	defer a.Close()
	defer b.Close()
	testutil.AssertEqual(t, "sharded vs single-file output", b, a)

	require.NoError(t, os.Remove(filepath.Join(dir, second)))
	_, err = LoadFlux(dir, torch.Float32, torch.CPU)
	require.Error(t, err)
	require.Contains(t, err.Error(), second)

	empty := t.TempDir()
	cfg, _ := os.ReadFile(filepath.Join(dir, "config.json"))
	require.NoError(t, os.WriteFile(filepath.Join(empty, "config.json"), cfg, 0o644))
	_, err = LoadFlux(empty, torch.Float32, torch.CPU)
	require.ErrorContains(t, err, WeightsFile)
}

// TestControlNetOtherLayouts: checkpoints that do not fit the configured
// ControlNet fail with errors that name the problem.
func TestControlNetOtherLayouts(t *testing.T) {
	testutil.NoLeak(t)
	flat := rawTensors(t, testutil.Fixture(t, "flux/controlnet/model.safetensors"))
	trans := rawTensors(t, testutil.Fixture(t, "flux/transformer/"+WeightsFile))
	cfg := flatControlNetConfig(t)
	write := func(ts []safetensors.Tensor) string {
		p := filepath.Join(t.TempDir(), "model.safetensors")
		require.NoError(t, safetensors.Save(p, ts, nil))
		return p
	}
	load := func(path string, c Config) error {
		cn, err := LoadControlNetFile(path, c, torch.Float32, torch.CPU)
		cn.Close()
		return err
	}

	// Single blocks in the file, none in the config.
	var withSingle []safetensors.Tensor
	withSingle = append(withSingle, flat...)
	for _, x := range trans {
		if strings.HasPrefix(x.Name, "single_transformer_blocks.0.") {
			withSingle = append(withSingle, x)
		}
	}
	err := load(write(withSingle), cfg)
	require.ErrorIs(t, err, nn.ErrWeights)
	require.ErrorContains(t, err, "unexpected keys")
	require.ErrorContains(t, err, "single_transformer_blocks.0.")

	// More blocks in the config than in the file.
	more := cfg
	more.NumLayers++
	err = load(write(flat), more)
	require.ErrorIs(t, err, nn.ErrWeights)
	require.ErrorContains(t, err, "missing keys")

	// The original (BFL / x-flux) key layout.
	bfl := []safetensors.Tensor{{Name: "double_blocks.0.img_attn.qkv.weight", DType: safetensors.F32, Shape: []int64{1}, Data: make([]byte, 4)}}
	err = load(write(append(bfl, flat...)), cfg)
	require.ErrorIs(t, err, nn.ErrWeights)
	require.ErrorContains(t, err, "BFL")

	// A truncated file.
	data, err := os.ReadFile(testutil.Fixture(t, "flux/controlnet/model.safetensors"))
	require.NoError(t, err)
	trunc := filepath.Join(t.TempDir(), "model.safetensors")
	require.NoError(t, os.WriteFile(trunc, data[:len(data)/2], 0o644))
	require.Error(t, load(trunc, cfg))

	// A missing file and a folder without config.
	require.Error(t, load(filepath.Join(t.TempDir(), "none.safetensors"), cfg))
	_, err = LoadControlNet(t.TempDir(), torch.Float32, torch.CPU)
	require.ErrorContains(t, err, "config")
}

// TestForwardBadInput: wrong shapes, missing guidance, wrong residuals and
// odd latent sizes are errors, not panics, and leak nothing.
func TestForwardBadInput(t *testing.T) {
	testutil.NoLeak(t)
	f := loadFixtureFlux(t)
	ref := testutil.Tensors(t, testutil.Fixture(t, "flux/transformer/io.safetensors"))
	s := torch.NewScope()
	defer s.Close()
	x := ref["hidden_states"]
	d := f.Config.InnerDim()
	bsz, l := x.Size(0), x.Size(1)
	mod := map[string]func(in *Input){
		"no guidance":      func(in *Input) { in.Guidance = nil },
		"no hidden states": func(in *Input) { in.HiddenStates = nil },
		"channels":         func(in *Input) { in.HiddenStates = x.Narrow(2, 0, x.Size(2)-1) },
		"unpacked latents": func(in *Input) { in.HiddenStates = x.Unsqueeze(0) },
		"img_ids length":   func(in *Input) { in.ImgIDs = in.ImgIDs.Narrow(0, 1, l-1) },
		"txt_ids length":   func(in *Input) { in.TxtIDs = in.TxtIDs.Narrow(0, 1, in.TxtIDs.Size(0)-1) },
		"text width": func(in *Input) {
			in.EncoderHiddenStates = in.EncoderHiddenStates.Narrow(2, 1, in.EncoderHiddenStates.Size(2)-1)
		},
		"pooled width": func(in *Input) {
			in.PooledProjections = in.PooledProjections.Narrow(1, 1, in.PooledProjections.Size(1)-1)
		},
		"timestep batch": func(in *Input) { in.Timestep = torch.Zeros([]int64{bsz + 1}, torch.Float32, torch.CPU) },
		"controlnet sample": func(in *Input) {
			in.ControlNetBlockSamples = []*torch.Tensor{torch.Zeros([]int64{bsz, l + 1, d}, torch.Float32, torch.CPU)}
		},
		"single sample": func(in *Input) {
			in.ControlNetSingleBlockSamples = []*torch.Tensor{torch.Zeros([]int64{bsz, l, d + 1}, torch.Float32, torch.CPU)}
		},
		"nil controlnet input": func(in *Input) { in.ControlNetBlockSamples = []*torch.Tensor{nil} },
	}
	for name, m := range mod {
		in := input(ref)
		m(&in)
		out, err := f.Forward(in)
		require.Error(t, err, name)
		require.Nil(t, out, name)
	}

	cnIn := input(ref)
	cn, err := ControlNetFromTransformer(f, ControlNetOptions{NumLayers: 1})
	require.NoError(t, err)
	defer cn.Close()
	_, _, err = cn.Forward(cnIn, x.Narrow(1, 1, l-1), 1)
	require.ErrorContains(t, err, "controlnet_cond")
	_, _, err = cn.Forward(cnIn, nil, 1)
	require.ErrorContains(t, err, "controlnet_cond")

	// Odd latent sides cannot be packed.
	z := torch.Zeros([]int64{1, 4, 5, 6}, torch.Float32, torch.CPU)
	_, err = PackLatents(z)
	require.ErrorContains(t, err, "even")
	_, err = UnpackLatents(x, 5, 6)
	require.ErrorContains(t, err, "even")
	_, err = UnpackLatents(x, 2, 2)
	require.Error(t, err)
	_, err = ImageIDs(0, 3, torch.Float32, torch.CPU)
	require.Error(t, err)
	_, _, err = PosEmbed(ref["img_ids"].Narrow(1, 0, 2), f.Config.AxesDimsRope, RopeTheta)
	require.Error(t, err)
}
