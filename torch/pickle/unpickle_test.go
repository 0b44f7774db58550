package pickle

import (
	"archive/zip"
	"encoding/binary"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// pk builds protocol-2 pickles shaped like those of torch.save.
type pk struct{ b []byte }

func newPK() *pk { return &pk{b: []byte{0x80, 2}} }

func (p *pk) op(ops ...byte) *pk { p.b = append(p.b, ops...); return p }

func (p *pk) str(s string) *pk {
	p.b = append(p.b, 'X')
	p.b = binary.LittleEndian.AppendUint32(p.b, uint32(len(s)))
	p.b = append(p.b, s...)
	return p
}

func (p *pk) int(v int32) *pk {
	p.b = append(p.b, 'J')
	p.b = binary.LittleEndian.AppendUint32(p.b, uint32(v))
	return p
}

func (p *pk) global(module, name string) *pk {
	p.b = append(p.b, 'c')
	p.b = append(p.b, module+"\n"+name+"\n"...)
	return p
}

func (p *pk) ints(vs ...int64) *pk {
	p.op('(')
	for _, v := range vs {
		p.int(int32(v))
	}
	return p.op('t')
}

// tensor pushes _rebuild_tensor_v2(storage, offset, shape, stride, False, OrderedDict()).
func (p *pk) tensor(key, storageClass string, numel, offset int64, shape, stride []int64) *pk {
	p.global("torch._utils", "_rebuild_tensor_v2").op('(')
	p.op('(').str("storage").global("torch", storageClass).str(key).str("cpu").int(int32(numel)).op('t', 'Q')
	p.int(int32(offset)).ints(shape...).ints(stride...).op(0x89)
	p.global("collections", "OrderedDict").op(')', 'R')
	return p.op('t', 'R')
}

// dict pushes a dict built by the calls in items, which push keys and
// values alternately.
func (p *pk) dict(items ...func(*pk)) *pk {
	p.op('}', '(')
	for _, it := range items {
		it(p)
	}
	return p.op('u')
}

func (p *pk) done() []byte { return append(p.b, '.') }

func str(s string) func(*pk) { return func(p *pk) { p.str(s) } }
func num(v int32) func(*pk)  { return func(p *pk) { p.int(v) } }
func f32(key string, n int64) func(*pk) {
	return func(p *pk) { p.tensor(key, "FloatStorage", n, 0, []int64{n}, []int64{1}) }
}
func sub(items ...func(*pk)) func(*pk) { return func(p *pk) { p.dict(items...) } }

// fakeStorages serves storages whose bytes count up from a per-key start.
type fakeStorages struct{ read map[string]int }

func (f *fakeStorages) storage(key string, nbytes int64) ([]byte, error) {
	if nbytes > 1<<20 {
		return nil, fmt.Errorf("fake storage %q: %d bytes is too large", key, nbytes)
	}
	if f.read == nil {
		f.read = map[string]int{}
	}
	f.read[key]++
	b := make([]byte, nbytes)
	for i := range b {
		b[i] = byte(i + len(key))
	}
	return b, nil
}

func decodeDefault(pkl []byte) (*StateDict, error) {
	return decode(pkl, &fakeStorages{}, &options{stripPrefix: "module."})
}

func TestRefusedGlobals(t *testing.T) {
	cases := map[string]string{
		// GLOBAL, protocols 0 and 2.
		"c__builtin__\neval\n(S'1'\ntR.":                    `refused global "__builtin__.eval"`,
		"\x80\x02cbuiltins\nexec\nq\x00.":                   `refused global "builtins.exec"`,
		"\x80\x02cposix\nsystem\nX\x02\x00\x00\x00ls\x85R.": `refused global "posix.system"`,
		"cos\nsystem\n.":                                    `refused global "os.system"`,
		// Resolved by gopickle itself, refused here all the same.
		"c__builtin__\nobject\n.":            `refused global "__builtin__.object"`,
		"ccopy_reg\n_reconstructor\n.":       `refused global "copy_reg._reconstructor"`,
		"ctorch\nload\n.":                    `refused global "torch.load"`,
		"ctorch._utils\n_rebuild_qtensor\n.": `refused global "torch._utils._rebuild_qtensor"`,
		// INST.
		"(S'ls'\nios\nsystem\n.": `refused global "os.system"`,
		// STACK_GLOBAL, also with operands taken from the memo.
		"\x80\x04\x8c\x02os\x94\x8c\x06system\x94\x93.":                                     `refused global "os.system"`,
		"\x80\x04\x8c\x02os\x94\x8c\x02xx\x94\x30\x30h\x00\x8c\x06system\x93.":              `refused global "os.system"`,
		"\x80\x04\x8c\x02os\x94\x8c\x06system\x94\x95\x01\x00\x00\x00\x00\x00\x00\x00\x93.": `refused global "os.system"`,
		// Operands that cannot be traced are refused too.
		"\x80\x04\x8c\x02os\x8c\x06system2\x93.":           "cannot be verified",
		"\x80\x04\x8c\x02os\x8c\x06system\x86\x93.":        "cannot be verified",
		"\x80\x04\x8c\x06system\x93.":                      "cannot be verified",
		"\x80\x04(\x8c\x02os\x8c\x06system\x8c\x01x0\x93.": "cannot be verified",
	}
	for pkl, want := range cases {
		_, err := unpickle([]byte(pkl))
		require.Error(t, err, "%q", pkl)
		require.Contains(t, err.Error(), want, "%q", pkl)
	}

	// Allowlisted globals resolve, through STACK_GLOBAL and the memo too.
	for _, pkl := range []string{
		"\x80\x04\x8c\x0bcollections\x94\x8c\x0bOrderedDict\x94\x93\x94)R.",
		"\x80\x04\x8c\x0bcollections\x94\x8c\x0bOrderedDict\x94\x930h\x00h\x01\x93)R.",
		"\x80\x02ccollections\nOrderedDict\n)R.",
	} {
		_, err := unpickle([]byte(pkl))
		require.NoError(t, err, "%q", pkl)
	}
}

func TestMalformedPickles(t *testing.T) {
	cases := map[string]string{
		"":                                      "ends before STOP",
		"\x80\x02}":                             "ends before STOP",
		"\xff.":                                 "unknown pickle opcode 0xff",
		"X\xff\xff\xff\x7f.":                    "unexpected end",
		"\x8e\xff\xff\xff\xff\xff\xff\xff\xff.": "unexpected end",
		"\x95\xff\xff\xff\xff\xff\xff\xff\x7f.": "unexpected end",
		"\x8a\x00.":                             "LONG opcode of 0 bytes",
		"\x8b\x00\x04\x00\x00" + strings.Repeat("\x01", 1024) + ".": "LONG opcode of 1024 bytes",
		"L" + strings.Repeat("9", 5000) + "\n.":                     "LONG literal",
		"\x82\x01.":                                                 "extension codes",
		"\x97.":                                                     "out-of-band",
		"cos\nsys":                                                  "unexpected end",
		strings.Repeat("(", 5000) + ".":                             "MARK deeper",
		"g-1\n.":                                                    "invalid memo index",
		"S'abc\n.":                                                  "must be quoted",
		// Panics inside gopickle become errors.
		"}(K\x01u.": "malformed pickle",
		"\x80\x03ccollections\nOrderedDict\n)RC\x01aK\x01s.": "malformed pickle",
		// Wrong arguments to the rebuild functions.
		"ctorch._utils\n_rebuild_tensor_v2\n)R.":                                           "_rebuild_tensor_v2: got 0 arguments",
		"ctorch._utils\n_rebuild_parameter\n(K\x01K\x01K\x01tR.":                           "_rebuild_parameter: argument 1 is int",
		"ctorch\nFloatStorage\n(K\x01tR.":                                                  "REDUCE requires a Callable",
		"(X\x07\x00\x00\x00storageK\x01X\x01\x00\x00\x000X\x03\x00\x00\x00cpuK\x01tQ.":     "storage type is int",
		"(X\x07\x00\x00\x00storagectorch\nFloatStorage\nK\x00X\x03\x00\x00\x00cpuK\x01tQ.": "invalid storage key",
		"X\x03\x00\x00\x00abcQ.":                                                           "unsupported persistent id",
		"Pabc\n.":                                                                          "unsupported persistent id",
	}
	for pkl, want := range cases {
		require.NotPanics(t, func() {
			_, err := unpickle([]byte(pkl))
			require.Error(t, err, "%q", pkl)
			require.Contains(t, err.Error(), want, "%q", pkl)
		})
	}
}

func TestSelection(t *testing.T) {
	// A wrapper with both params and params_ema uses params_ema.
	sd, err := decodeDefault(newPK().dict(
		str("params"), sub(str("w"), f32("0", 2)),
		str("params_ema"), sub(str("w"), f32("1", 3)),
	).done())
	require.NoError(t, err)
	require.Equal(t, "params_ema", sd.Key)
	require.Equal(t, []int64{3}, sd.Tensors[0].Shape)
	require.Empty(t, sd.Extra, "entries holding tensors are left out of Extra")

	// state_dict comes first; plain values become Extra.
	sd, err = decodeDefault(newPK().dict(
		str("model"), sub(str("w"), f32("0", 2)),
		str("state_dict"), sub(str("module.a"), f32("1", 1), str("module.b"), f32("2", 1)),
		str("cfg"), sub(str("lr"), num(5), str("name"), str("x"), num(7), str("seven")),
		str("list"), func(p *pk) { p.op(']', '(').int(1).str("a").op(')', 'e') },
		str("bin"), func(p *pk) { p.op(0x80, 3, 'C', 2, 'h', 'i') },
		str("float"), func(p *pk) { p.op('G', 0x3f, 0xf8, 0, 0, 0, 0, 0, 0) },
		str("flag"), func(p *pk) { p.op(0x88) },
		str("obj"), func(p *pk) { p.global("torch", "FloatStorage") },
	).done())
	require.NoError(t, err)
	require.Equal(t, "state_dict", sd.Key)
	require.Equal(t, "module.", sd.StrippedPrefix)
	require.Equal(t, []string{"a", "b"}, sd.Names())
	require.Equal(t, map[string]any{
		"cfg":   map[string]any{"lr": 5, "name": "x", "7": "seven"},
		"list":  []any{1, "a", []any{}},
		"bin":   []byte("hi"),
		"float": 1.5,
		"flag":  true,
	}, sd.Extra)

	// Repeated keys: the last value wins, at the first position.
	sd, err = decodeDefault(newPK().dict(str("a"), f32("0", 1), str("b"), f32("1", 2), str("a"), f32("2", 3)).done())
	require.NoError(t, err)
	require.Equal(t, []string{"a", "b"}, sd.Names())
	a, _ := sd.Get("a")
	require.Equal(t, []int64{3}, a.Shape)

	// Parameters load as their data; a key equal to the prefix is kept.
	sd, err = decodeDefault(newPK().dict(
		str("module."), func(p *pk) {
			p.global("torch._utils", "_rebuild_parameter").op('(')
			f32("0", 4)(p)
			p.op(0x88).global("collections", "OrderedDict").op(')', 'R', 't', 'R')
		},
		str("module.x"), f32("0", 4),
	).done())
	require.NoError(t, err)
	require.Empty(t, sd.StrippedPrefix)
	require.Equal(t, []string{"module.", "module.x"}, sd.Names())

	// An empty OrderedDict is an empty state dict.
	sd, err = decodeDefault(newPK().global("collections", "OrderedDict").op(')', 'R').done())
	require.NoError(t, err)
	require.Empty(t, sd.Tensors)

	for want, pkl := range map[string][]byte{
		"checkpoint holds a *types.List, not a dict": newPK().op(']').done(),
		"checkpoint holds a None, not a dict":        newPK().op('N').done(),
		`no state dict found: the checkpoint is not a dict of tensors and none of the keys state_dict, params_ema, params, model, module, ema holds one (keys: "model", "epoch")`: newPK().dict(
			str("model"), sub(str("w"), f32("0", 1), str("n"), num(1)),
			str("epoch"), num(1),
		).done(),
	} {
		_, err := decodeDefault(pkl)
		require.Error(t, err)
		require.Contains(t, err.Error(), want)
	}
}

// naiveView computes the expected bytes of a view element by element.
func naiveView(storage []byte, esize, offset int64, shape, stride []int64) []byte {
	var out []byte
	idx := make([]int64, len(shape))
	numel := int64(1)
	for _, d := range shape {
		numel *= d
	}
	for n := int64(0); n < numel; n++ {
		p := offset
		for i := range idx {
			p += idx[i] * stride[i]
		}
		out = append(out, storage[p*esize:(p+1)*esize]...)
		for i := len(idx) - 1; i >= 0; i-- {
			if idx[i]++; idx[i] < shape[i] {
				break
			}
			idx[i] = 0
		}
	}
	if out == nil {
		out = []byte{}
	}
	return out
}

func TestMaterialize(t *testing.T) {
	src := &fakeStorages{}
	views := []struct {
		dtype         string
		numel, offset int64
		shape, stride []int64
	}{
		{"I32", 6, 0, []int64{3, 2}, []int64{1, 3}},             // transpose
		{"F32", 24, 6, []int64{2, 3}, []int64{6, 2}},            // a[1:3, ::2]
		{"F16", 6, 0, []int64{2, 3}, []int64{0, 1}},             // broadcast
		{"I64", 24, 1, []int64{2, 3, 2}, []int64{1, 8, 3}},      // permuted
		{"BF16", 30, 3, []int64{2, 1, 3}, []int64{12, 99, 1}},   // size-1 dim, inner run
		{"U8", 10, 2, []int64{4}, []int64{2}},                   // step
		{"BOOL", 5, 4, []int64{}, []int64{}},                    // 0-d
		{"F64", 4, 100, []int64{0, 3}, []int64{3, 1}},           // empty: offset irrelevant
		{"I8", 12, 0, []int64{3, 4}, []int64{4, 1}},             // contiguous
		{"I16", 12, 2, []int64{1, 1, 10}, []int64{1, 1, 1}},     // contiguous with offset
		{"F32", 8, 0, []int64{2, 2, 2}, []int64{1, 2, 4}},       // fully reversed strides
		{"I32", 5, 0, []int64{3, 3, 3, 3}, []int64{0, 1, 0, 1}}, // overlapping
		{"U8", 1, 0, []int64{1 << 12, 1 << 8}, []int64{0, 0}},   // broadcast beyond the storage
		{"F32", 16, 0, []int64{4, 4}, []int64{4, 1}},            // identity
		{"I64", 16, 15, []int64{4, 1, 1}, []int64{0, 1, 1}},     // last element broadcast
		{"F16", 9, 0, []int64{3, 3}, []int64{1, 3}},             // square transpose
		{"F32", 65, 5, []int64{3, 4, 5}, []int64{1, 3, 12}},     // column-major-ish
		{"I32", 64, 0, []int64{2, 2, 2, 2, 2, 2}, []int64{32, 16, 8, 4, 2, 1}},
	}
	for _, v := range views {
		ref := &tensorRef{storage: &storageRef{key: "k", dtype: v.dtype, numel: v.numel}, offset: v.offset, shape: v.shape, stride: v.stride}
		got, aliased, err := ref.materialize(src, false)
		require.False(t, aliased)
		require.NoError(t, err, "%+v", v)
		esize := dtypeSizes[v.dtype]
		storage, _ := src.storage("k", v.numel*esize)
		require.Equal(t, naiveView(storage, esize, v.offset, v.shape, v.stride), got, "%+v", v)
	}

	bad := []struct {
		want          string
		numel, offset int64
		shape, stride []int64
	}{
		{"exceeds its storage of 24 elements", 24, 7, []int64{3, 6}, []int64{6, 1}},
		{"exceeds its storage of 24 elements", 24, 24, []int64{}, []int64{}},
		{"exceeds its storage of 4 elements", 4, 0, []int64{2, 2}, []int64{3, 1}},
		{"overflows", 4, 0, []int64{3, 3}, []int64{1 << 62, 1 << 62}},
		{"overflows", 4, 1 << 62, []int64{1 << 40, 2}, []int64{1 << 40, 1}},
		{"shape [4294967296 4294967296 4294967296] is too large", 4, 0, []int64{1 << 32, 1 << 32, 1 << 32}, []int64{0, 0, 0}},
		{"more than its storage", 4, 0, []int64{1 << 20, 1 << 20}, []int64{0, 0}},
	}
	for _, b := range bad {
		ref := &tensorRef{storage: &storageRef{key: "k", dtype: "F32", numel: b.numel}, offset: b.offset, shape: b.shape, stride: b.stride}
		_, _, err := ref.materialize(src, true)
		require.Error(t, err, "%+v", b)
		require.Contains(t, err.Error(), b.want)
	}

	// Views are validated when rebuilt, and the error names the tensor.
	for want, pkl := range map[string][]byte{
		`tensor "w": view (offset 0, shape [5], stride [1]) exceeds its storage of 4 elements`: newPK().dict(str("w"), func(p *pk) {
			p.tensor("0", "FloatStorage", 4, 0, []int64{5}, []int64{1})
		}).done(),
		"_rebuild_tensor_v2: negative size [-1] or stride [1]": newPK().dict(str("w"), func(p *pk) {
			p.tensor("0", "FloatStorage", 4, 0, []int64{-1}, []int64{1})
		}).done(),
		"_rebuild_tensor_v2: size [1 1] and stride [1] differ in length": newPK().dict(str("w"), func(p *pk) {
			p.tensor("0", "FloatStorage", 4, 0, []int64{1, 1}, []int64{1})
		}).done(),
		"_rebuild_tensor_v2: invalid storage offset -1": newPK().dict(str("w"), func(p *pk) {
			p.tensor("0", "FloatStorage", 4, -1, []int64{1}, []int64{1})
		}).done(),
		"persistent id: invalid storage size -4": newPK().dict(str("w"), func(p *pk) {
			p.tensor("0", "FloatStorage", -4, 0, []int64{1}, []int64{1})
		}).done(),
	} {
		_, err := decodeDefault(pkl)
		require.Error(t, err)
		require.Contains(t, err.Error(), want)
	}

	// A storage shared by several tensors is read once.
	src = &fakeStorages{}
	sd, err := decode(newPK().dict(
		str("a"), func(p *pk) { p.tensor("s", "FloatStorage", 8, 0, []int64{8}, []int64{1}) },
		str("b"), func(p *pk) { p.tensor("s", "FloatStorage", 8, 2, []int64{2, 2}, []int64{1, 2}) },
	).done(), &cachingSource{src: src, cache: map[string][]byte{}}, &options{})
	require.NoError(t, err)
	require.Len(t, sd.Tensors, 2)
	require.Equal(t, map[string]int{"s": 1}, src.read)

	// A whole-storage tensor may take the storage's bytes without a copy,
	// but no two tensors share bytes.
	src = &fakeStorages{}
	sd, err = decode(newPK().dict(
		str("a"), func(p *pk) { p.tensor("s", "FloatStorage", 4, 0, []int64{4}, []int64{1}) },
		str("b"), func(p *pk) { p.tensor("s", "FloatStorage", 4, 0, []int64{2, 2}, []int64{2, 1}) },
		str("c"), func(p *pk) { p.tensor("s", "FloatStorage", 4, 0, []int64{4}, []int64{1}) },
	).done(), &cachingSource{src: src, cache: map[string][]byte{}}, &options{})
	require.NoError(t, err)
	a, b, c := sd.Tensors[0].Data, sd.Tensors[1].Data, sd.Tensors[2].Data
	require.Equal(t, a, b)
	require.Equal(t, a, c)
	a[0]++
	require.NotEqual(t, a[0], b[0])
	require.NotEqual(t, a[0], c[0])
	b[1]++
	require.NotEqual(t, b[1], c[1])
}

// cachingSource caches storages like archive does.
type cachingSource struct {
	src   storageSource
	cache map[string][]byte
}

func (c *cachingSource) storage(key string, nbytes int64) ([]byte, error) {
	if b, ok := c.cache[key]; ok {
		return b, nil
	}
	b, err := c.src.storage(key, nbytes)
	c.cache[key] = b
	return b, err
}

// fixturePickles returns data.pkl of every zip .pth fixture.
func fixturePickles(tb testing.TB) [][]byte {
	var out [][]byte
	for _, pattern := range []string{"*.pth", "bad/*.pth"} {
		files, err := filepath.Glob(fixture(tb, pattern))
		require.NoError(tb, err)
		for _, path := range files {
			zr, err := zip.OpenReader(path)
			if err != nil {
				continue
			}
			for _, f := range zr.File {
				if strings.HasSuffix(f.Name, "/data.pkl") {
					rc, err := f.Open()
					require.NoError(tb, err)
					b, err := io.ReadAll(rc)
					require.NoError(tb, err)
					rc.Close()
					out = append(out, b)
				}
			}
			zr.Close()
		}
	}
	return out
}

func FuzzDecode(f *testing.F) {
	for _, b := range fixturePickles(f) {
		f.Add(b)
	}
	f.Add(newPK().dict(
		str("model"), sub(str("w"), func(p *pk) { p.tensor("0", "HalfStorage", 8, 1, []int64{2, 3}, []int64{1, 2}) }),
		str("cfg"), sub(str("lr"), num(5)),
	).done())
	f.Add([]byte("\x80\x04\x8c\x0bcollections\x94\x8c\x0bOrderedDict\x94\x93\x94)R."))
	f.Fuzz(func(t *testing.T, data []byte) {
		sd, err := decodeDefault(data)
		if err != nil {
			return
		}
		checkStateDict(t, sd)
	})
}

func FuzzLoad(f *testing.F) {
	for _, pattern := range []string{"*.pth", "bad/*.pth"} {
		files, err := filepath.Glob(fixture(f, pattern))
		require.NoError(f, err)
		for _, path := range files {
			b, err := os.ReadFile(path)
			require.NoError(f, err)
			f.Add(b)
		}
	}
	dir := f.TempDir()
	f.Fuzz(func(t *testing.T, data []byte) {
		path := filepath.Join(dir, "fuzz.pth")
		require.NoError(t, os.WriteFile(path, data, 0o644))
		sd, err := Load(path)
		if err != nil {
			require.True(t, strings.HasPrefix(err.Error(), "pickle: "+path+": "), err.Error())
			return
		}
		checkStateDict(t, sd)
	})
}

func checkStateDict(t *testing.T, sd *StateDict) {
	for _, tn := range sd.Tensors {
		n := dtypeSizes[tn.DType]
		require.NotZero(t, n, tn.DType)
		for _, d := range tn.Shape {
			n *= d
		}
		require.EqualValues(t, n, len(tn.Data))
		got, ok := sd.Get(tn.Name)
		require.True(t, ok)
		_ = got
	}
}
