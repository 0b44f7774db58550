package nn

import (
	"encoding/binary"
	"encoding/json"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/dp2osr/dp2o/internal/testutil"
	"github.com/dp2osr/dp2o/torch"
	"github.com/dp2osr/dp2o/torch/pickle"
	"github.com/dp2osr/dp2o/torch/safetensors"
)

func TestAddVariantAndCandidates(t *testing.T) {
	// The names diffusers 0.32 and transformers build with _add_variant.
	require.Equal(t, "diffusion_pytorch_model.fp16.safetensors", AddVariant("diffusion_pytorch_model.safetensors", "fp16"))
	require.Equal(t, "diffusion_pytorch_model.safetensors.index.fp16.json", AddVariant("diffusion_pytorch_model.safetensors.index.json", "fp16"))
	require.Equal(t, "pytorch_model.fp16.bin", AddVariant("pytorch_model.bin", "fp16"))
	require.Equal(t, "model.safetensors", AddVariant("model.safetensors", ""))

	require.Equal(t, []string{"diffusion_pytorch_model.safetensors.index.json", "diffusion_pytorch_model.safetensors",
		"diffusion_pytorch_model.bin"}, DiffusersWeights.Candidates(""))
	require.Equal(t, []string{"diffusion_pytorch_model.safetensors.index.fp16.json", "diffusion_pytorch_model.safetensors.fp16.index.json",
		"diffusion_pytorch_model.fp16.safetensors", "diffusion_pytorch_model.fp16.bin"}, DiffusersWeights.Candidates("fp16"))
	require.Equal(t, []string{"model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
		"pytorch_model.bin.index.json"}, TransformersWeights.Candidates(""))
	require.Equal(t, []string{"model.fp16.safetensors", "model.safetensors.index.fp16.json", "pytorch_model.fp16.bin",
		"pytorch_model.bin.index.fp16.json"}, TransformersWeights.Candidates("fp16"))

	require.True(t, HasVariant([]string{"config.json", "diffusion_pytorch_model.fp16.safetensors"}, "fp16"))
	require.True(t, HasVariant([]string{"model.fp16-00001-of-00002.safetensors"}, "fp16"))
	require.False(t, HasVariant([]string{"config.json", "diffusion_pytorch_model.safetensors"}, "fp16"))
	require.False(t, HasVariant([]string{"diffusion_pytorch_model.fp16.safetensors"}, ""))
}

func touch(t *testing.T, dir string, names ...string) {
	t.Helper()
	for _, n := range names {
		require.NoError(t, os.WriteFile(filepath.Join(dir, n), nil, 0o644))
	}
}

func TestFindWeightsPrecedence(t *testing.T) {
	cases := []struct {
		w       WeightFiles
		files   []string
		variant string
		want    string
	}{
		// diffusers: sharded index, then single safetensors, then .bin.
		{DiffusersWeights, []string{"diffusion_pytorch_model.bin", "diffusion_pytorch_model.safetensors"}, "", "diffusion_pytorch_model.safetensors"},
		{DiffusersWeights, []string{"diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.safetensors.index.json"}, "", "diffusion_pytorch_model.safetensors.index.json"},
		{DiffusersWeights, []string{"diffusion_pytorch_model.bin", "diffusion_pytorch_model.fp16.safetensors"}, "", "diffusion_pytorch_model.bin"},
		{DiffusersWeights, []string{"diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.fp16.safetensors"}, "fp16", "diffusion_pytorch_model.fp16.safetensors"},
		{DiffusersWeights, []string{"diffusion_pytorch_model.fp16.bin", "diffusion_pytorch_model.safetensors"}, "fp16", "diffusion_pytorch_model.fp16.bin"},
		{DiffusersWeights, []string{"diffusion_pytorch_model.fp16.safetensors", "diffusion_pytorch_model.safetensors.index.fp16.json"}, "fp16", "diffusion_pytorch_model.safetensors.index.fp16.json"},
		{DiffusersWeights, []string{"diffusion_pytorch_model.fp16.safetensors", "diffusion_pytorch_model.safetensors.fp16.index.json"}, "fp16", "diffusion_pytorch_model.safetensors.fp16.index.json"},
		// transformers: single safetensors, then its index, then .bin, then its index.
		{TransformersWeights, []string{"model.safetensors", "model.safetensors.index.json", "pytorch_model.bin"}, "", "model.safetensors"},
		{TransformersWeights, []string{"pytorch_model.bin", "model.safetensors.index.json"}, "", "model.safetensors.index.json"},
		{TransformersWeights, []string{"pytorch_model.bin.index.json", "pytorch_model.bin"}, "", "pytorch_model.bin"},
		{TransformersWeights, []string{"pytorch_model.bin.index.json"}, "", "pytorch_model.bin.index.json"},
		{TransformersWeights, []string{"model.safetensors", "pytorch_model.fp16.bin"}, "fp16", "pytorch_model.fp16.bin"},
	}
	for _, c := range cases {
		dir := t.TempDir()
		touch(t, dir, c.files...)
		got, err := FindWeights(dir, c.w, c.variant)
		require.NoError(t, err, "%v", c.files)
		require.Equal(t, filepath.Join(dir, c.want), got, "%v variant %q", c.files, c.variant)
	}
}

func TestFindWeightsErrorNamesFolderAndFiles(t *testing.T) {
	dir := t.TempDir()
	touch(t, dir, "config.json", "diffusion_pytorch_model.safetensors")
	_, err := FindWeights(dir, DiffusersWeights, "fp16")
	require.Error(t, err)
	require.Contains(t, err.Error(), dir)
	for _, c := range DiffusersWeights.Candidates("fp16") {
		require.Contains(t, err.Error(), c)
	}
	require.Contains(t, err.Error(), "there is diffusion_pytorch_model.safetensors")

	empty := t.TempDir()
	_, err = FindWeights(empty, TransformersWeights, "")
	require.ErrorContains(t, err, empty)
	require.ErrorContains(t, err, "model.safetensors, model.safetensors.index.json, pytorch_model.bin, pytorch_model.bin.index.json")
}

// smallStateDict is a few float32 tensors with distinct values.
func smallStateDict() []safetensors.Tensor {
	mk := func(name string, shape ...int64) safetensors.Tensor {
		n := int64(1)
		for _, s := range shape {
			n *= s
		}
		b := make([]byte, 4*n)
		for i := range n {
			binary.LittleEndian.PutUint32(b[4*i:], math.Float32bits(float32(i)*0.37-float32(len(name))))
		}
		return safetensors.Tensor{Name: name, DType: "F32", Shape: shape, Data: b}
	}
	return []safetensors.Tensor{mk("a.weight", 3, 4), mk("a.bias", 3), mk("b.weight", 2, 3, 1, 1), mk("c.scale")}
}

func toPickle(ts []safetensors.Tensor) []pickle.Tensor {
	var out []pickle.Tensor
	for _, t := range ts {
		out = append(out, pickle.Tensor{Name: t.Name, DType: string(t.DType), Shape: t.Shape, Data: t.Data})
	}
	return out
}

func writeIndex(t *testing.T, path string, weightMap map[string]string) {
	t.Helper()
	b, err := json.Marshal(map[string]any{"metadata": map[string]any{"total_size": 0}, "weight_map": weightMap})
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(path, b, 0o644))
}

func TestOpenWeightsFormats(t *testing.T) {
	testutil.NoLeak(t)
	sd := smallStateDict()
	dir := t.TempDir()
	require.NoError(t, safetensors.Save(filepath.Join(dir, "model.safetensors"), sd, nil))
	require.NoError(t, pickle.Save(filepath.Join(dir, "pytorch_model.bin"), "", toPickle(sd)))
	// Two shards of each format, with their index.
	wm, wmBin := map[string]string{}, map[string]string{}
	for i, part := range [][]safetensors.Tensor{sd[:2], sd[2:]} {
		st := filepath.Join(dir, "model-0000"+string(rune('1'+i))+"-of-00002.safetensors")
		bin := strings.TrimSuffix(filepath.Base(st), ".safetensors") + ".bin"
		require.NoError(t, safetensors.Save(st, part, nil))
		require.NoError(t, pickle.Save(filepath.Join(dir, bin), "", toPickle(part)))
		for _, p := range part {
			wm[p.Name], wmBin[p.Name] = filepath.Base(st), bin
		}
	}
	writeIndex(t, filepath.Join(dir, "model.safetensors.index.fp16.json"), wm)
	writeIndex(t, filepath.Join(dir, "pytorch_model.bin.index.json"), wmBin)
	require.NoError(t, pickle.Save(filepath.Join(dir, "noext"), "", toPickle(sd)))

	for _, f := range []string{"model.safetensors", "pytorch_model.bin", "model.safetensors.index.fp16.json",
		"pytorch_model.bin.index.json", "noext"} {
		src, err := OpenWeights(filepath.Join(dir, f))
		require.NoError(t, err, f)
		var names []string
		for _, want := range sd {
			names = append(names, want.Name)
			shape, dt, ok := src.Meta(want.Name)
			require.True(t, ok, "%s: %s", f, want.Name)
			require.Equal(t, torch.Float32, dt)
			require.Equal(t, append([]int64{}, want.Shape...), append([]int64{}, shape...), "%s: %s", f, want.Name)
			got, err := src.Load(want.Name)
			require.NoError(t, err)
			require.Equal(t, want.Data, got.Bytes(), "%s: %s", f, want.Name)
			got.Close()
		}
		require.ElementsMatch(t, names, src.Names(), f)
		require.NoError(t, src.Close())
	}

	// Bad files are clear errors naming the file.
	dup := map[string]string{}
	for k, v := range wmBin {
		dup[k] = v
	}
	require.NoError(t, pickle.Save(filepath.Join(dir, "extra.bin"), "", toPickle(sd[:1])))
	dup["z"] = "extra.bin"
	writeIndex(t, filepath.Join(dir, "dup.bin.index.json"), dup)
	_, err := OpenWeights(filepath.Join(dir, "dup.bin.index.json"))
	require.ErrorContains(t, err, "more than one shard")
	writeIndex(t, filepath.Join(dir, "escape.index.json"), map[string]string{"a": "../x.safetensors"})
	_, err = OpenWeights(filepath.Join(dir, "escape.index.json"))
	require.ErrorContains(t, err, "not a path inside")
	require.NoError(t, os.WriteFile(filepath.Join(dir, "trunc.bin"), []byte("PK\x03\x04junk"), 0o644))
	_, err = OpenWeights(filepath.Join(dir, "trunc.bin"))
	require.ErrorContains(t, err, "trunc.bin")
	_, err = OpenWeights(filepath.Join(dir, "missing.safetensors"))
	require.ErrorContains(t, err, "missing.safetensors")
}
