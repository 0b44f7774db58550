package pickle

import (
	"encoding/binary"
	"math"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"
)

func f32s(vs ...float32) []byte {
	b := make([]byte, 4*len(vs))
	for i, v := range vs {
		binary.LittleEndian.PutUint32(b[4*i:], math.Float32bits(v))
	}
	return b
}

// TestWriteSharedViews writes views that share storages (a tied pair, a
// strided view, an offset view), nested under a key beside other entries,
// and reads them back with Load.
func TestWriteSharedViews(t *testing.T) {
	data := f32s(0, 1, 2, 3, 4, 5)
	calls := 0
	storages := []Storage{
		{DType: "F32", Numel: 6, Data: func() ([]byte, error) { calls++; return data, nil }},
		{DType: "I64", Numel: 0},
	}
	views := []View{
		{Name: "a", Storage: 0, Shape: []int64{2, 3}},
		{Name: "tied", Storage: 0, Shape: []int64{2, 3}},
		{Name: "t", Storage: 0, Shape: []int64{3, 2}, Stride: []int64{1, 3}},
		{Name: "tail", Storage: 0, Offset: 4, Shape: []int64{2}},
		{Name: "empty", Storage: 1, Shape: []int64{0, 4}},
	}
	path := filepath.Join(t.TempDir(), "w.pth")
	require.NoError(t, Write(path, "model", map[string]int64{"epoch": 3, "big": 1 << 40}, storages, views))
	require.Equal(t, 1, calls, "each storage is fetched once")
	sd, err := Load(path, WithKey("model"))
	require.NoError(t, err)
	require.Equal(t, []string{"a", "tied", "t", "tail", "empty"}, sd.Names())
	get := func(n string) *Tensor { x, ok := sd.Get(n); require.True(t, ok, n); return x }
	require.Equal(t, data, get("a").Data)
	require.Equal(t, data, get("tied").Data)
	require.Equal(t, f32s(0, 3, 1, 4, 2, 5), get("t").Data)
	require.Equal(t, []int64{3, 2}, get("t").Shape)
	require.Equal(t, f32s(4, 5), get("tail").Data)
	require.Equal(t, []int64{0, 4}, get("empty").Shape)
	require.Equal(t, "I64", get("empty").DType)
	require.EqualValues(t, 3, sd.Extra["epoch"])

	// Without a wrapper the file is the state dict itself.
	flat := filepath.Join(t.TempDir(), "flat.pth")
	require.NoError(t, Write(flat, "", nil, storages[:1], views[:2]))
	sd, err = Load(flat)
	require.NoError(t, err)
	require.Equal(t, "", sd.Key)
	require.Equal(t, []string{"a", "tied"}, sd.Names())
	entries, err := os.ReadDir(filepath.Dir(flat))
	require.NoError(t, err)
	require.Len(t, entries, 1, "no temporary file left behind")
}

func TestWriteRejects(t *testing.T) {
	path := filepath.Join(t.TempDir(), "bad.pth")
	st := []Storage{{DType: "F32", Numel: 2, Data: func() ([]byte, error) { return f32s(1, 2), nil }}}
	require.ErrorContains(t, Write(path, "", nil, st, []View{{Name: "x", Storage: 0, Shape: []int64{3}}}), "exceeds its storage")
	require.ErrorContains(t, Write(path, "", nil, st, []View{{Name: "x", Storage: 1, Shape: []int64{1}}}), "no storage 1")
	require.ErrorContains(t, Write(path, "", nil, []Storage{{DType: "C64", Numel: 1}}, nil), "unsupported dtype")
	short := []Storage{{DType: "F32", Numel: 3, Data: func() ([]byte, error) { return f32s(1), nil }}}
	require.ErrorContains(t, Write(path, "", nil, short, []View{{Name: "x", Storage: 0, Shape: []int64{3}}}), "4 bytes, want 12")
	_, err := os.Stat(path)
	require.True(t, os.IsNotExist(err), "a failed write leaves no file")
}

// TestLoadWithFilter returns only the selected tensors.
func TestLoadWithFilter(t *testing.T) {
	keep := f32s(1, 2)
	storages := []Storage{
		{DType: "F32", Numel: 2, Data: func() ([]byte, error) { return keep, nil }},
		{DType: "F32", Numel: 3, Data: func() ([]byte, error) { return f32s(7, 8, 9), nil }},
	}
	views := []View{{Name: "keep.w", Storage: 0, Shape: []int64{2}}, {Name: "skip.w", Storage: 1, Shape: []int64{3}}}
	path := filepath.Join(t.TempDir(), "f.pth")
	require.NoError(t, Write(path, "", nil, storages, views))
	sd, err := Load(path, WithFilter(func(n string) bool { return n == "keep.w" }))
	require.NoError(t, err)
	require.Equal(t, []string{"keep.w"}, sd.Names())
	require.Equal(t, keep, sd.Tensors[0].Data)
}
