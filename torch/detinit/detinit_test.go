package detinit_test

import (
	"encoding/json"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/dp2osr/dp2o/internal/testutil"
	"github.com/dp2osr/dp2o/torch"
	"github.com/dp2osr/dp2o/torch/detinit"
)

func TestBuildMatchesFixture(t *testing.T) {
	testutil.NoLeak(t)
	path := testutil.Fixture(t, "torch/detinit.json")
	m, err := detinit.LoadManifest(path)
	require.NoError(t, err)
	require.True(t, m.HasSeed)
	// The seed is the manifest's own, read back independently of LoadManifest.
	var raw struct {
		Seed *uint64 `json:"seed"`
	}
	data, err := os.ReadFile(path)
	require.NoError(t, err)
	require.NoError(t, json.Unmarshal(data, &raw))
	require.NotNil(t, raw.Seed)
	require.Equal(t, *raw.Seed, m.Seed)
	want := testutil.Tensors(t, testutil.Fixture(t, "torch/detinit_expected.safetensors"))
	require.Len(t, m.Specs, len(want))

	src, err := m.Build(torch.CPU)
	require.NoError(t, err)
	defer src.Close()
	require.Equal(t, len(want), len(src))
	for name, w := range want {
		got, ok := src[name]
		require.True(t, ok, "no %s", name)
		require.Equal(t, m.Specs[name].DType, got.DType(), name)
		testutil.AssertEqual(t, name, got, w)
	}

	// Building again gives the same tensors; another seed does not.
	again, err := detinit.Build(m.Specs, m.Seed, torch.CPU)
	require.NoError(t, err)
	defer again.Close()
	for name, w := range want {
		testutil.AssertEqual(t, name+" (again)", again[name], w)
	}
	other, err := detinit.Build(m.Specs, m.Seed+1, torch.CPU)
	require.NoError(t, err)
	defer other.Close()
	differs := false
	for name, w := range want {
		if w.Numel() > 1 && w.DType().IsFloat() && !other[name].Equal(w) {
			differs = true
		}
	}
	require.True(t, differs, "another seed gives other random tensors")
}

func TestBuildOnDevice(t *testing.T) {
	dev := testutil.Device(t)
	testutil.NoLeak(t)
	m, err := detinit.LoadManifest(testutil.Fixture(t, "torch/detinit.json"))
	require.NoError(t, err)
	want := testutil.Tensors(t, testutil.Fixture(t, "torch/detinit_expected.safetensors"))
	src, err := m.Build(dev)
	require.NoError(t, err)
	defer src.Close()
	for name, w := range want {
		require.Equal(t, dev.Type, src[name].Device().Type)
		testutil.AssertEqual(t, name, src[name], w) // Bytes copies back to the CPU
	}
}

func TestLoadManifestForms(t *testing.T) {
	dir := t.TempDir()
	plain := filepath.Join(dir, "manifest.json")
	require.NoError(t, os.WriteFile(plain, []byte(`{"a.weight": {"shape": [2, 3], "dtype": "float16"},
		"n": {"shape": [], "dtype": "int64"}}`), 0o644))
	m, err := detinit.LoadManifest(plain)
	require.NoError(t, err)
	require.False(t, m.HasSeed)
	require.Equal(t, detinit.Spec{Shape: []int64{2, 3}, DType: torch.Float16}, m.Specs["a.weight"])
	require.Equal(t, []int64{}, m.Specs["n"].Shape)
	_, err = m.Build(torch.CPU)
	require.ErrorContains(t, err, "no seed")
	src, err := detinit.Build(m.Specs, 3, torch.CPU)
	require.NoError(t, err)
	require.Equal(t, int64(0), src["n"].ItemInt())
	require.Equal(t, torch.Float16, src["a.weight"].DType())
	src.Close()

	bad := filepath.Join(dir, "bad.json")
	require.NoError(t, os.WriteFile(bad, []byte(`{"x": {"shape": [2], "dtype": "float99"}}`), 0o644))
	_, err = detinit.LoadManifest(bad)
	require.ErrorContains(t, err, "float99")
	require.NoError(t, os.WriteFile(bad, []byte(`{"x": {"dtype": "float32"}}`), 0o644))
	_, err = detinit.LoadManifest(bad)
	require.ErrorContains(t, err, "without a shape")
	_, err = detinit.LoadManifest(filepath.Join(dir, "missing.json"))
	require.Error(t, err)
	_, err = detinit.Build(map[string]detinit.Spec{"x": {Shape: []int64{-1}, DType: torch.Float32}}, 1, torch.CPU)
	require.ErrorContains(t, err, "negative")
}
