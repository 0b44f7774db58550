package pickle

import (
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"
)

// TestSaveRoundTrip writes the tensors of every fixture checkpoint back with
// Save, flat and nested under a key, and reads them again with Load.
func TestSaveRoundTrip(t *testing.T) {
	for _, fx := range pthFixtures {
		sd, err := Load(fixture(t, fx.file))
		require.NoError(t, err)
		for _, top := range []string{"", "params"} {
			path := filepath.Join(t.TempDir(), "out.pth")
			require.NoError(t, Save(path, top, sd.Tensors))
			back, err := Load(path)
			require.NoError(t, err, "%s under %q", fx.file, top)
			require.Equal(t, top, back.Key)
			require.Equal(t, sd.Tensors, back.Tensors, "%s under %q", fx.file, top)
		}
	}
}

func TestSaveRejects(t *testing.T) {
	path := filepath.Join(t.TempDir(), "bad.pth")
	require.ErrorContains(t, Save(path, "", []Tensor{{Name: "x", DType: "F32", Shape: []int64{2}, Data: make([]byte, 4)}}), "4 bytes for shape [2]")
	require.ErrorContains(t, Save(path, "", []Tensor{{Name: "x", DType: "C64", Shape: []int64{}, Data: nil}}), "unsupported dtype")
}

func TestSaveTensorRoundTrip(t *testing.T) {
	sd, err := Load(fixture(t, "plain_state_dict.pth"))
	require.NoError(t, err)
	for _, tt := range sd.Tensors {
		path := filepath.Join(t.TempDir(), "t.pth")
		tt.Name = ""
		require.NoError(t, SaveTensor(path, tt))
		back, err := LoadTensor(path)
		require.NoError(t, err)
		require.Equal(t, tt, back)
	}
	_, err = LoadTensor(fixture(t, "plain_state_dict.pth"))
	require.ErrorContains(t, err, "not a tensor")
}

func TestSaveSections(t *testing.T) {
	sd, err := Load(fixture(t, "plain_state_dict.pth"))
	require.NoError(t, err)
	path := filepath.Join(t.TempDir(), "multi.pth")
	half := len(sd.Tensors) / 2
	require.NoError(t, SaveSections(path, []Section{{Key: "a", Tensors: sd.Tensors[:half]}, {Key: "b", Tensors: sd.Tensors[half:]}}))
	a, err := Load(path, WithKey("a"))
	require.NoError(t, err)
	require.Equal(t, sd.Tensors[:half], a.Tensors)
	b, err := Load(path, WithKey("b"))
	require.NoError(t, err)
	require.Equal(t, sd.Tensors[half:], b.Tensors)
}
