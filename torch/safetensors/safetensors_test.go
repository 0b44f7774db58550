package safetensors

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// fixture returns the path of a file of the shared torch fixtures:
// $DP2O_FIXTURES/torch/rel when DP2O_FIXTURES is set, else testdata/rel.
func fixture(tb testing.TB, rel string) string {
	tb.Helper()
	if dir := os.Getenv("DP2O_FIXTURES"); dir != "" {
		return filepath.Join(dir, "torch", filepath.FromSlash(rel))
	}
	return filepath.Join("testdata", filepath.FromSlash(rel))
}

// torchDTypes maps the torch dtype names of dtypes.json to safetensors ones.
var torchDTypes = map[string]DType{
	"float64": F64, "float32": F32, "float16": F16, "bfloat16": BF16,
	"int64": I64, "int32": I32, "int16": I16, "int8": I8, "uint8": U8, "bool": BOOL,
}

type expectedTensor struct {
	DType  string    `json:"dtype"`
	Shape  []int64   `json:"shape"`
	Values []float64 `json:"values"`
}

func TestDTypes(t *testing.T) {
	buf, err := os.ReadFile(fixture(t, "dtypes.json"))
	require.NoError(t, err)
	var want map[string]expectedTensor
	require.NoError(t, json.Unmarshal(buf, &want))
	require.NotEmpty(t, want)

	f, err := Open(fixture(t, "dtypes.safetensors"))
	require.NoError(t, err)
	defer f.Close()

	var names []string
	for name := range want {
		names = append(names, name)
	}
	slices.Sort(names)
	require.Equal(t, names, f.Names())
	require.Equal(t, map[string]string{"format": "pt"}, f.Metadata())

	for name, exp := range want {
		t.Run(name, func(t *testing.T) {
			dt, ok := torchDTypes[exp.DType]
			require.True(t, ok, "unknown torch dtype %q in dtypes.json", exp.DType)
			info, ok := f.Info(name)
			require.True(t, ok)
			require.Equal(t, name, info.Name)
			require.Equal(t, dt, info.DType)
			require.Equal(t, exp.Shape, info.Shape)
			require.EqualValues(t, len(exp.Values), info.NumElements())

			data, err := f.Data(name)
			require.NoError(t, err)
			require.Len(t, data, len(exp.Values)*dt.Size())
			got, err := DecodeFloat64s(dt, data)
			require.NoError(t, err)
			for i := range exp.Values {
				require.Equal(t, math.Float64bits(exp.Values[i]), math.Float64bits(got[i]),
					"element %d: got %v, want %v", i, got[i], exp.Values[i])
			}
		})
	}
}

// badMessages gives, for fixture files in bad/, a fragment the error must
// contain.
var badMessages = map[string]string{
	"empty_file.safetensors":           "file too small (0 bytes",
	"huge_header_len.safetensors":      "header length 1152921504606846976 exceeds the limit",
	"not_json.safetensors":             "header is not valid JSON",
	"offsets_out_of_range.safetensors": `tensor "f32": data_offsets [0 1000000000] exceed data size`,
	"shape_size_mismatch.safetensors":  `tensor "f32": shape [5 5] of F32 needs 25 elements × 4 bytes, but data_offsets [47 95] span 48 bytes`,
	"truncated_data.safetensors":       "exceed data size",
	"truncated_header.safetensors":     "header length 776 exceeds the 388 bytes that follow it",
	"unknown_dtype.safetensors":        `tensor "f32": unknown dtype "F99"`,
}

func TestBadFiles(t *testing.T) {
	files, err := filepath.Glob(fixture(t, "bad/*.safetensors"))
	require.NoError(t, err)
	require.NotEmpty(t, files)
	seen := map[string]bool{}
	for _, path := range files {
		base := filepath.Base(path)
		seen[base] = true
		t.Run(base, func(t *testing.T) {
			f, err := Open(path)
			if err == nil {
				f.Close()
			}
			require.Error(t, err)
			require.ErrorIs(t, err, ErrFormat)
			msg := err.Error()
			require.True(t, strings.HasPrefix(msg, "safetensors: "+path+": "), msg)
			if want, ok := badMessages[base]; ok {
				require.Contains(t, msg, want)
			}
			t.Log(msg)
		})
	}
	for base := range badMessages {
		require.True(t, seen[base], "fixture bad/%s missing", base)
	}
}

func TestSharded(t *testing.T) {
	s, err := OpenIndex(fixture(t, "sharded.safetensors.index.json"))
	require.NoError(t, err)
	defer s.Close()

	require.Equal(t, []string{"a.bias", "a.weight", "b.weight"}, s.Names())
	require.Equal(t, []string{"sharded-00001-of-00002.safetensors", "sharded-00002-of-00002.safetensors"}, s.Shards())
	require.EqualValues(t, 96, s.IndexMetadata()["total_size"])
	want := map[string]struct {
		dt    DType
		shape []int64
	}{
		"a.weight": {F32, []int64{4, 4}},
		"a.bias":   {F32, []int64{4}},
		"b.weight": {F16, []int64{2, 4}},
	}
	total := 0
	for name, w := range want {
		info, ok := s.Info(name)
		require.True(t, ok, name)
		require.Equal(t, w.dt, info.DType, name)
		require.Equal(t, w.shape, info.Shape, name)
		data, err := s.Data(name)
		require.NoError(t, err)
		require.EqualValues(t, info.NumElements()*int64(w.dt.Size()), len(data))
		total += len(data)
	}
	require.Equal(t, 96, total)
	_, ok := s.Info("missing")
	require.False(t, ok)
	_, err = s.Data("missing")
	require.ErrorIs(t, err, ErrNotFound)

	// OpenAny dispatches on the suffix.
	r, err := OpenAny(fixture(t, "sharded.safetensors.index.json"))
	require.NoError(t, err)
	require.IsType(t, &Sharded{}, r)
	require.NoError(t, r.Close())
	r, err = OpenAny(fixture(t, "dtypes.safetensors"))
	require.NoError(t, err)
	require.IsType(t, &File{}, r)
	require.NoError(t, r.Close())

	require.NoError(t, s.Close())
	require.NoError(t, s.Close())
	_, err = s.Data("a.bias")
	require.ErrorIs(t, err, ErrClosed)
}

func TestIndexErrors(t *testing.T) {
	dir := t.TempDir()
	shard := filepath.Join(dir, "shard.safetensors")
	require.NoError(t, Save(shard, []Tensor{{Name: "x", DType: U8, Shape: []int64{2}, Data: []byte{1, 2}}}, nil))
	cases := map[string]string{
		`{"weight_map": {"x": "shard.safetensors", "y": "shard.safetensors"}}`: `tensor "y": not found in shard shard.safetensors`,
		`{"weight_map": {"x": "../shard.safetensors"}}`:                        `is not a path inside the index directory`,
		`{"weight_map": {"x": "/etc/passwd"}}`:                                 `is not a path inside the index directory`,
		`{"weight_map": {"x": "missing.safetensors"}}`:                         `missing.safetensors`,
		`{"metadata": {}}`: `index has no weight_map`,
		`[1, 2]`:           `index is not valid JSON`,
	}
	for index, want := range cases {
		path := filepath.Join(dir, "model.safetensors.index.json")
		require.NoError(t, os.WriteFile(path, []byte(index), 0o644))
		_, err := OpenIndex(path)
		require.Error(t, err, index)
		require.Contains(t, err.Error(), want, index)
	}
}

func TestSaveRoundTrip(t *testing.T) {
	src, err := Open(fixture(t, "dtypes.safetensors"))
	require.NoError(t, err)
	defer src.Close()

	var tensors []Tensor
	for _, name := range src.Names() {
		info, _ := src.Info(name)
		data, err := src.Data(name)
		require.NoError(t, err)
		tensors = append(tensors, Tensor{Name: name, DType: info.DType, Shape: info.Shape, Data: data})
	}
	slices.Reverse(tensors) // Save must not depend on the input order
	meta := map[string]string{"format": "pt", "note": "<round & trip>"}

	path := filepath.Join(t.TempDir(), "out.safetensors")
	require.NoError(t, Save(path, tensors, meta))
	entries, err := os.ReadDir(filepath.Dir(path))
	require.NoError(t, err)
	require.Len(t, entries, 1, "temporary file left behind")

	raw, err := os.ReadFile(path)
	require.NoError(t, err)
	n := binary.LittleEndian.Uint64(raw)
	require.Zero(t, n%8, "header not padded to 8 bytes")
	header := raw[8 : 8+n]
	require.Contains(t, string(header), `"note":"<round & trip>"`)
	// Keys are written in sorted order.
	dec := json.NewDecoder(strings.NewReader(string(header)))
	_, err = dec.Token()
	require.NoError(t, err)
	var keys []string
	for dec.More() {
		tok, err := dec.Token()
		require.NoError(t, err)
		keys = append(keys, tok.(string))
		var skip json.RawMessage
		require.NoError(t, dec.Decode(&skip))
	}
	require.True(t, slices.IsSorted(keys), "%v", keys)
	require.Len(t, keys, len(tensors)+1)

	got, err := Open(path)
	require.NoError(t, err)
	defer got.Close()
	require.Equal(t, src.Names(), got.Names())
	require.Equal(t, meta, got.Metadata())
	var offset int64
	for _, name := range src.Names() {
		a, _ := src.Info(name)
		b, _ := got.Info(name)
		require.Equal(t, a.DType, b.DType)
		require.Equal(t, a.Shape, b.Shape)
		require.Equal(t, offset, b.Offsets[0], "data not laid out in name order")
		offset = b.Offsets[1]
		da, _ := src.Data(name)
		db, err := got.Data(name)
		require.NoError(t, err)
		require.Equal(t, da, db)
	}
	require.EqualValues(t, len(raw)-8-int(n), offset)

	// Tensors whose data comes from a Source, asked for one at a time
	// in the file's order, give the same file.
	var lazy []Tensor
	var asked []string
	for _, x := range tensors {
		lazy = append(lazy, Tensor{Name: x.Name, DType: x.DType, Shape: x.Shape, Source: func() ([]byte, error) {
			asked = append(asked, x.Name)
			return x.Data, nil
		}})
	}
	lazyPath := filepath.Join(t.TempDir(), "lazy.safetensors")
	require.NoError(t, Save(lazyPath, lazy, meta))
	lazyRaw, err := os.ReadFile(lazyPath)
	require.NoError(t, err)
	require.Equal(t, raw, lazyRaw)
	require.Equal(t, src.Names(), asked)

	// Overwriting an existing file replaces it.
	require.NoError(t, Save(path, tensors[:1], nil))
	f, err := Open(path)
	require.NoError(t, err)
	require.Len(t, f.Names(), 1)
	require.Empty(t, f.Metadata())
	require.NoError(t, f.Close())
}

func TestSaveErrors(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "bad.safetensors")
	cases := map[string][]Tensor{
		"needs 16 bytes of data, got 3": {{Name: "a", DType: F32, Shape: []int64{2, 2}, Data: make([]byte, 3)}},
		`unknown dtype "F99"`:           {{Name: "a", DType: "F99", Shape: []int64{1}, Data: make([]byte, 4)}},
		"duplicate tensor name":         {{Name: "a", DType: U8, Data: []byte{1}}, {Name: "a", DType: U8, Data: []byte{1}}},
		"invalid shape [-1]":            {{Name: "a", DType: U8, Shape: []int64{-1}}},
		"reserved tensor name":          {{Name: "__metadata__", DType: U8, Data: []byte{1}}},
		"empty tensor name":             {{DType: U8, Data: []byte{1}}},
		"its source gave 3":             {{Name: "a", DType: F32, Shape: []int64{2}, Source: func() ([]byte, error) { return make([]byte, 3), nil }}},
		"device lost": {{Name: "a", DType: U8, Shape: []int64{1}, Data: []byte{1}},
			{Name: "b", DType: U8, Shape: []int64{1}, Source: func() ([]byte, error) { return nil, errors.New("device lost") }}},
	}
	for want, tensors := range cases {
		err := Save(path, tensors, nil)
		require.Error(t, err)
		require.Contains(t, err.Error(), want)
		require.Contains(t, err.Error(), path)
	}
	entries, err := os.ReadDir(dir)
	require.NoError(t, err)
	require.Empty(t, entries)

	// A 0-d tensor is written with shape [] and read back as such.
	require.NoError(t, Save(path, []Tensor{{Name: "s", DType: F64, Data: make([]byte, 8)}}, nil))
	f, err := Open(path)
	require.NoError(t, err)
	defer f.Close()
	info, _ := f.Info("s")
	require.Equal(t, []int64{}, info.Shape)
	require.EqualValues(t, 1, info.NumElements())
}

func TestFileAccessors(t *testing.T) {
	f, err := Open(fixture(t, "dtypes.safetensors"))
	require.NoError(t, err)
	_, err = f.Data("missing")
	require.ErrorIs(t, err, ErrNotFound)
	require.Contains(t, err.Error(), `tensor "missing"`)

	// Returned values are copies.
	info, _ := f.Info("f32")
	info.Shape[0] = 99
	info, _ = f.Info("f32")
	require.Equal(t, []int64{3, 4}, info.Shape)
	names := f.Names()
	names[0] = "x"
	require.NotEqual(t, "x", f.Names()[0])

	require.NoError(t, f.Close())
	require.NoError(t, f.Close())
	_, err = f.Data("f32")
	require.ErrorIs(t, err, ErrClosed)

	_, err = Open(filepath.Join(t.TempDir(), "nope.safetensors"))
	require.ErrorIs(t, err, os.ErrNotExist)
	_, err = Open(t.TempDir())
	require.ErrorIs(t, err, ErrFormat)
}

func TestParseErrors(t *testing.T) {
	build := func(header string, dataLen int) []byte {
		buf := binary.LittleEndian.AppendUint64(nil, uint64(len(header)))
		buf = append(buf, header...)
		return append(buf, make([]byte, dataLen)...)
	}
	cases := map[string]struct {
		header string
		data   int
	}{
		`tensor "a.weight": data_offsets [0 400] exceed data size 390`: {`{"a.weight":{"dtype":"F32","shape":[10,10],"data_offsets":[0,400]}}`, 390},
		`tensor "a": invalid data_offsets [8 4]`:                       {`{"a":{"dtype":"U8","shape":[4],"data_offsets":[8,4]}}`, 8},
		`tensor "a": invalid data_offsets [-4 0]`:                      {`{"a":{"dtype":"U8","shape":[4],"data_offsets":[-4,0]}}`, 8},
		`tensor "a": data_offsets [0] must have 2 elements`:            {`{"a":{"dtype":"U8","shape":[4],"data_offsets":[0]}}`, 8},
		`tensor "a": invalid shape [-2 -2]`:                            {`{"a":{"dtype":"U8","shape":[-2,-2],"data_offsets":[0,4]}}`, 8},
		`tensor "a": invalid shape`:                                    {`{"a":{"dtype":"U8","shape":[4294967296,4294967296,4294967296],"data_offsets":[0,0]}}`, 8},
		`tensor "a": missing dtype`:                                    {`{"a":{"shape":[4],"data_offsets":[0,4]}}`, 8},
		`tensor "a": missing shape`:                                    {`{"a":{"dtype":"U8","data_offsets":[0,4]}}`, 8},
		`tensor "a": missing data_offsets`:                             {`{"a":{"dtype":"U8","shape":[4]}}`, 8},
		`tensor "a": invalid entry`:                                    {`{"a":[]}`, 8},
		`__metadata__ is not an object of strings`:                     {`{"__metadata__":{"n":1}}`, 0},
		`header is not a JSON object`:                                  {`[]`, 0},
	}
	for want, c := range cases {
		_, err := parse("model.safetensors", build(c.header, c.data))
		require.Error(t, err, c.header)
		require.ErrorIs(t, err, ErrFormat)
		require.Equal(t, "safetensors: model.safetensors: ", err.Error()[:len("safetensors: model.safetensors: ")])
		require.Contains(t, err.Error(), want)
	}
	var e *Error
	_, err := parse("model.safetensors", build(`{"a.weight":{"dtype":"F32","shape":[10,10],"data_offsets":[0,400]}}`, 390))
	require.True(t, errors.As(err, &e))
	require.Equal(t, "a.weight", e.Tensor)
	require.Equal(t, `safetensors: model.safetensors: tensor "a.weight": data_offsets [0 400] exceed data size 390`, err.Error())

	// An empty object is a valid file with no tensors.
	f, err := parse("empty.safetensors", build(`{}      `, 0))
	require.NoError(t, err)
	require.Empty(t, f.Names())
}

func TestDecodeFloat64s(t *testing.T) {
	u16 := func(vs ...uint16) []byte {
		var b []byte
		for _, v := range vs {
			b = binary.LittleEndian.AppendUint16(b, v)
		}
		return b
	}
	cases := []struct {
		dt   DType
		data []byte
		want []float64
	}{
		{F16, u16(0x3c00, 0xc000, 0x0001, 0x03ff, 0x7bff, 0x7c00, 0xfc00, 0x8000),
			[]float64{1, -2, 0x1p-24, 1023 * 0x1p-24, 65504, math.Inf(1), math.Inf(-1), math.Copysign(0, -1)}},
		{BF16, u16(0x3f80, 0xc0a0, 0x0001, 0x7f80), []float64{1, -5, 0x1p-133, math.Inf(1)}},
		{F8E4M3, []byte{0x38, 0x7e, 0x01, 0xb8}, []float64{1, 448, 0x1p-9, -1}},
		{F8E5M2, []byte{0x3c, 0x7b, 0x01, 0x7c}, []float64{1, 57344, 0x1p-16, math.Inf(1)}},
		{I16, u16(0xffff, 7), []float64{-1, 7}},
		{BOOL, []byte{0, 1, 2}, []float64{0, 1, 1}},
	}
	for _, c := range cases {
		got, err := DecodeFloat64s(c.dt, c.data)
		require.NoError(t, err, c.dt)
		require.Len(t, got, len(c.want))
		for i := range got {
			require.Equal(t, math.Float64bits(c.want[i]), math.Float64bits(got[i]), "%s[%d] = %v, want %v", c.dt, i, got[i], c.want[i])
		}
	}
	for _, nan := range []struct {
		dt   DType
		data []byte
	}{{F16, u16(0x7e00)}, {F8E4M3, []byte{0x7f}}, {F8E5M2, []byte{0x7e}}} {
		got, err := DecodeFloat64s(nan.dt, nan.data)
		require.NoError(t, err)
		require.True(t, math.IsNaN(got[0]), nan.dt)
	}
	_, err := DecodeFloat64s(F32, make([]byte, 6))
	require.Error(t, err)
	_, err = DecodeFloat64s("F99", nil)
	require.Error(t, err)
	require.True(t, F32.Supported())
	require.True(t, F8E4M3.Known())
	require.False(t, F8E4M3.Supported())
	require.False(t, DType("F99").Known())
}

func FuzzOpen(f *testing.F) {
	for _, pattern := range []string{"*.safetensors", "bad/*.safetensors"} {
		files, err := filepath.Glob(fixture(f, pattern))
		require.NoError(f, err)
		for _, path := range files {
			data, err := os.ReadFile(path)
			require.NoError(f, err)
			f.Add(data)
		}
	}
	dir := f.TempDir()
	f.Fuzz(func(t *testing.T, data []byte) {
		path := filepath.Join(dir, "fuzz.safetensors")
		require.NoError(t, os.WriteFile(path, data, 0o644))
		sf, err := Open(path)
		if err != nil {
			require.ErrorIs(t, err, ErrFormat)
			return
		}
		defer sf.Close()
		for _, name := range sf.Names() {
			info, ok := sf.Info(name)
			require.True(t, ok)
			b, err := sf.Data(name)
			require.NoError(t, err)
			require.EqualValues(t, info.NumElements()*int64(info.DType.Size()), len(b))
			_, err = DecodeFloat64s(info.DType, b)
			require.NoError(t, err)
		}
		_ = sf.Metadata()
	})
}

// TestRelease: a released tensor's pages leave the process's resident set
// (Linux) and its data reads the same afterwards.
func TestRelease(t *testing.T) {
	const n = 8 << 20
	data := make([]byte, n)
	for i := range data {
		data[i] = byte(i * 7)
	}
	path := filepath.Join(t.TempDir(), "big.safetensors")
	require.NoError(t, Save(path, []Tensor{{Name: "x", DType: U8, Shape: []int64{n}, Data: data}}, nil))
	f, err := Open(path)
	require.NoError(t, err)
	defer f.Close()
	rssFile := func() int64 {
		b, err := os.ReadFile("/proc/self/status")
		if err != nil {
			t.Skipf("no /proc/self/status: %v", err)
		}
		for _, l := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(l, "RssFile:"); ok {
				var kb int64
				_, err := fmt.Sscan(strings.TrimSuffix(strings.TrimSpace(v), " kB"), &kb)
				require.NoError(t, err)
				return kb << 10
			}
		}
		t.Skip("no RssFile in /proc/self/status")
		return 0
	}
	got, err := f.Data("x")
	require.NoError(t, err)
	require.Equal(t, data, got) // reads every page
	before := rssFile()
	f.Release("x")
	after := rssFile()
	if runtime.GOOS == "linux" && before-after < n*3/4 {
		t.Errorf("Release dropped %d bytes of the mapping from the resident set (%d → %d), want about %d", before-after, before, after, n)
	}
	again, err := f.Data("x")
	require.NoError(t, err)
	require.Equal(t, data, again)
	f.Release("missing") // nothing to release
}
