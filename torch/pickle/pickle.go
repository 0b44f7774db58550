// Package pickle reads PyTorch checkpoints written by torch.save in the zip
// format (PyTorch 1.6 and later) in pure Go, without executing anything.
//
// A checkpoint is a zip archive holding <prefix>/data.pkl, a Python pickle
// of the saved object, and one <prefix>/data/<key> file per tensor storage.
// The pickle is decoded with github.com/nlpodyssey/gopickle behind an
// allowlist, in the spirit of torch.load(weights_only=True): the only
// globals that resolve are
//
//	collections.OrderedDict
//	torch._utils._rebuild_tensor_v2
//	torch._utils._rebuild_parameter
//	torch._utils._rebuild_parameter_with_state
//	torch.{Double,Float,Half,BFloat16,Long,Int,Short,Char,Byte,Bool}Storage
//
// and all of them are implemented in Go. Any other global (os.system,
// builtins.eval, ...) fails the load with a [*RefusedGlobalError] before
// the pickle is interpreted at all.
//
// The legacy (pre-1.6, non-zip) format is not supported.
package pickle

import (
	"archive/zip"
	"bytes"
	"errors"
	"fmt"
	"io"
	"math/big"
	"math/bits"
	"os"
	"slices"
	"strings"

	"github.com/nlpodyssey/gopickle/types"
)

// MaxPickleSize is the largest data.pkl accepted, in bytes.
const MaxPickleSize = 64 << 20

// ErrLegacyFormat is matched by the error for checkpoints in the legacy
// (non-zip) torch.save format.
var ErrLegacyFormat = errors.New("legacy torch.save format not supported (re-save it with a PyTorch >= 1.6 torch.save)")

// Error reports a failure to load a checkpoint. It prints as
// "pickle: <path>: <problem>".
type Error struct {
	Path string
	Err  error
}

// Error formats the error as "pickle: <path>: <problem>".
func (e *Error) Error() string { return "pickle: " + e.Path + ": " + e.Err.Error() }

// Unwrap returns the underlying error.
func (e *Error) Unwrap() error { return e.Err }

// Tensor is a tensor of a state dict, materialised as contiguous data.
type Tensor struct {
	Name  string
	DType string  // safetensors spelling: F64 F32 F16 BF16 I64 I32 I16 I8 U8 BOOL
	Shape []int64 // [] for a 0-d tensor
	Data  []byte  // row-major, contiguous, little-endian
}

// StateDict is the tensor dictionary found in a checkpoint.
type StateDict struct {
	// Tensors in the order of the checkpoint's dictionary.
	Tensors []Tensor
	// Key is the top-level key the state dict was taken from ("" when the
	// checkpoint itself is the state dict).
	Key string
	// StrippedPrefix is the prefix removed from every name ("" if none).
	StrippedPrefix string
	// Extra holds the other top-level entries of a wrapper checkpoint that
	// contain no tensors, such as "epoch": 3 or "optimizer": nil, converted
	// to Go values: nil, bool, int, *big.Int, float64, string, []byte,
	// []any (tuples and lists) and map[string]any (dicts; keys that are
	// not strings are formatted with fmt.Sprint). Entries holding tensors
	// (other state dicts, optimizer state) or other objects are left out.
	// It is never nil.
	Extra map[string]any

	index map[string]int
}

// Names returns the tensor names in checkpoint order.
func (s *StateDict) Names() []string {
	names := make([]string, len(s.Tensors))
	for i, t := range s.Tensors {
		names[i] = t.Name
	}
	return names
}

// Get returns the named tensor.
func (s *StateDict) Get(name string) (*Tensor, bool) {
	i, ok := s.index[name]
	if !ok {
		return nil, false
	}
	return &s.Tensors[i], true
}

// Option configures [Load].
type Option func(*options)

type options struct {
	key         string
	keySet      bool
	stripPrefix string
	keep        func(name string) bool
}

// WithKey makes Load take the state dict from the given top-level key of the
// checkpoint instead of guessing; WithKey("") requires the checkpoint itself
// to be the state dict.
func WithKey(key string) Option {
	return func(o *options) { o.key, o.keySet = key, true }
}

// WithStripPrefix sets the prefix removed from every tensor name when all
// names have it (default "module.", as added by DataParallel);
// WithStripPrefix("") keeps names unchanged.
func WithStripPrefix(prefix string) Option {
	return func(o *options) { o.stripPrefix = prefix }
}

// stateDictKeys are the top-level keys searched for a state dict, in order,
// when the checkpoint is not itself a dict of tensors.
var stateDictKeys = []string{"state_dict", "params_ema", "params", "model", "module", "ema"}

// Load reads the state dict of the torch.save checkpoint at path.
//
// The checkpoint must be a dict. If all its values are tensors it is the
// state dict; otherwise the state dict is the value of the first of the
// keys "state_dict", "params_ema", "params", "model", "module" and "ema"
// that is a dict of tensors (override with [WithKey]). Every tensor view
// (storage offset and strides) is bounds-checked against its storage and
// copied into contiguous bytes; storages shared by several tensors are read
// once, and no two tensors share Data. Names lose a "module." prefix when
// all of them have it (see [WithStripPrefix]).
func Load(path string, opts ...Option) (*StateDict, error) {
	o := options{stripPrefix: "module."}
	for _, opt := range opts {
		opt(&o)
	}
	sd, err := load(path, &o)
	if err != nil {
		return nil, &Error{Path: path, Err: err}
	}
	return sd, nil
}

func load(path string, o *options) (sd *StateDict, err error) {
	err = withArchive(path, func(pkl []byte, a *archive) error {
		sd, err = decode(pkl, a, o)
		return err
	})
	return sd, err
}

// withArchive opens the zip checkpoint at path, reads its data.pkl and
// calls fn while the file is open (storages are read from it).
func withArchive(path string, fn func(pkl []byte, a *archive) error) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return err
	}
	if !st.Mode().IsRegular() {
		return errors.New("not a regular file")
	}
	var magic [4]byte
	n, _ := f.ReadAt(magic[:], 0)
	switch {
	case n == 4 && string(magic[:]) == "PK\x03\x04":
	case n >= 1 && magic[0] == 0x80:
		return ErrLegacyFormat
	case isTar(f):
		return ErrLegacyFormat
	default:
		return errors.New("not a PyTorch zip checkpoint")
	}
	zr, err := zip.NewReader(f, st.Size())
	if err != nil {
		return fmt.Errorf("not a valid zip archive (truncated or corrupt?): %w", err)
	}
	a, err := newArchive(zr, st.Size())
	if err != nil {
		return err
	}
	pkl, err := a.readEntry(a.prefix+"data.pkl", -1)
	if err != nil {
		return err
	}
	return fn(pkl, a)
}

// isTar reports whether f looks like a tar archive (the oldest torch.save
// format).
func isTar(f io.ReaderAt) bool {
	var b [5]byte
	n, _ := f.ReadAt(b[:], 257)
	return n == 5 && string(b[:]) == "ustar"
}

// storageSource provides the raw bytes of a storage.
type storageSource interface {
	// storage returns exactly nbytes bytes of the storage named key.
	storage(key string, nbytes int64) ([]byte, error)
}

// archive is a torch zip checkpoint.
type archive struct {
	size     int64
	prefix   string // "<dir>/"
	entries  map[string]*zip.File
	storages map[string][]byte
}

func newArchive(zr *zip.Reader, size int64) (*archive, error) {
	a := &archive{size: size, entries: make(map[string]*zip.File, len(zr.File)), storages: map[string][]byte{}}
	var prefixes []string
	for _, zf := range zr.File {
		a.entries[zf.Name] = zf
		if dir, ok := strings.CutSuffix(zf.Name, "/data.pkl"); ok && dir != "" && !strings.Contains(dir, "/") {
			prefixes = append(prefixes, dir+"/")
		}
	}
	switch len(prefixes) {
	case 0:
		return nil, errors.New("no <dir>/data.pkl in the zip archive; not a torch.save checkpoint")
	case 1:
		a.prefix = prefixes[0]
	default:
		return nil, fmt.Errorf("several data.pkl in the zip archive (%s)", strings.Join(prefixes, ", "))
	}
	if _, ok := a.entries[a.prefix+"byteorder"]; ok {
		bo, err := a.readEntry(a.prefix+"byteorder", -1)
		if err != nil {
			return nil, err
		}
		if s := strings.TrimSpace(string(bo)); s != "little" {
			return nil, fmt.Errorf("unsupported byteorder %q", s)
		}
	}
	return a, nil
}

// readEntry reads the named zip entry. If want >= 0 the entry must hold
// exactly want bytes; otherwise it may hold at most MaxPickleSize bytes.
func (a *archive) readEntry(name string, want int64) ([]byte, error) {
	zf, ok := a.entries[name]
	if !ok {
		return nil, fmt.Errorf("%s not found in the zip archive", name)
	}
	size := zf.UncompressedSize64
	switch {
	case want >= 0 && size != uint64(want):
		return nil, fmt.Errorf("%s holds %d bytes, want %d", name, size, want)
	case want < 0 && size > MaxPickleSize:
		return nil, fmt.Errorf("%s is larger than %d bytes", name, MaxPickleSize)
	case zf.Method == zip.Store && (zf.CompressedSize64 != size || size > uint64(a.size)):
		return nil, fmt.Errorf("%s: inconsistent sizes in the zip archive", name)
	}
	rc, err := zf.Open()
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	defer rc.Close()
	var buf []byte
	if zf.Method == zip.Store {
		// Bounded by the archive size: allocate at once.
		buf = make([]byte, size)
		_, err = io.ReadFull(rc, buf)
		if err == nil {
			// Reach EOF so that the CRC-32 is checked.
			var one [1]byte
			if _, err = rc.Read(one[:]); err == io.EOF {
				err = nil
			} else if err == nil {
				err = errors.New("entry longer than its declared size")
			}
		}
	} else {
		// Compressed: grow with the data actually decompressed.
		buf, err = io.ReadAll(io.LimitReader(rc, int64(size)+1))
		if err == nil && uint64(len(buf)) != size {
			err = errors.New("entry size differs from its declared size")
		}
	}
	if err != nil {
		if errors.Is(err, zip.ErrChecksum) || errors.Is(err, io.ErrUnexpectedEOF) {
			return nil, fmt.Errorf("%s: corrupt zip entry: %w", name, err)
		}
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	return buf, nil
}

func (a *archive) storage(key string, nbytes int64) ([]byte, error) {
	if b, ok := a.storages[key]; ok {
		if int64(len(b)) != nbytes {
			return nil, fmt.Errorf("storage %q used with sizes %d and %d bytes", key, len(b), nbytes)
		}
		return b, nil
	}
	if strings.ContainsAny(key, "/\\") || key == "." || key == ".." {
		return nil, fmt.Errorf("invalid storage key %q", key)
	}
	b, err := a.readEntry(a.prefix+"data/"+key, nbytes)
	if err != nil {
		return nil, fmt.Errorf("storage %q: %w", key, err)
	}
	a.storages[key] = b
	return b, nil
}

// decode unpickles data.pkl, selects the state dict and materialises its
// tensors.
func decode(pkl []byte, src storageSource, o *options) (*StateDict, error) {
	obj, err := unpickle(pkl)
	if err != nil {
		return nil, fmt.Errorf("data.pkl: %w", err)
	}
	top, ok := dictEntries(obj)
	if !ok {
		return nil, fmt.Errorf("checkpoint holds a %s, not a dict", typeName(obj))
	}
	sd := &StateDict{Extra: map[string]any{}}
	var entries []entry
	switch {
	case o.keySet && o.key == "":
		if !isTensorDict(top) {
			return nil, errors.New("checkpoint is not a dict of tensors")
		}
		entries = top
	case o.keySet:
		v, found := lookup(top, o.key)
		if !found {
			return nil, fmt.Errorf("checkpoint has no key %q (keys: %s)", o.key, keyList(top))
		}
		d, ok := dictEntries(v)
		if !ok || !isTensorDict(d) {
			return nil, fmt.Errorf("checkpoint key %q is not a dict of tensors", o.key)
		}
		entries, sd.Key = d, o.key
	case isTensorDict(top):
		entries = top
	default:
		for _, k := range stateDictKeys {
			if v, found := lookup(top, k); found {
				if d, ok := dictEntries(v); ok && isTensorDict(d) {
					entries, sd.Key = d, k
					break
				}
			}
		}
		if entries == nil {
			return nil, fmt.Errorf("no state dict found: the checkpoint is not a dict of tensors and none of the keys %s holds one (keys: %s)",
				strings.Join(stateDictKeys, ", "), keyList(top))
		}
	}
	if sd.Key != "" {
		budget := maxExtraNodes
		for _, e := range top {
			if k, ok := e.key.(string); ok && k != sd.Key {
				if v, ok := convert(e.value, 0, &budget); ok {
					sd.Extra[k] = v
				}
			}
		}
	}

	names := make([]string, len(entries))
	for i, e := range entries {
		names[i] = e.key.(string)
	}
	if p := o.stripPrefix; p != "" && len(names) > 0 {
		all := true
		for _, n := range names {
			if len(n) <= len(p) || !strings.HasPrefix(n, p) {
				all = false
				break
			}
		}
		if all {
			for i := range names {
				names[i] = names[i][len(p):]
			}
			sd.StrippedPrefix = p
		}
	}

	if o.keep != nil {
		var kept []entry
		var keptNames []string
		for i, e := range entries {
			if o.keep(names[i]) {
				kept, keptNames = append(kept, e), append(keptNames, names[i])
			}
		}
		entries, names = kept, keptNames
	}
	sd.Tensors = make([]Tensor, len(entries))
	sd.index = make(map[string]int, len(entries))
	handedOut := map[string]bool{} // storages given to a tensor without a copy
	for i, e := range entries {
		t := e.value.(*tensorRef)
		data, aliased, err := t.materialize(src, !handedOut[t.storage.key])
		if err != nil {
			return nil, fmt.Errorf("tensor %q: %w", names[i], err)
		}
		if aliased {
			handedOut[t.storage.key] = true
		}
		sd.Tensors[i] = Tensor{Name: names[i], DType: t.storage.dtype, Shape: slices.Clone(t.shape), Data: data}
		sd.index[names[i]] = i
	}
	return sd, nil
}

// entry is a key/value pair of a pickled dict.
type entry struct{ key, value any }

// dictEntries returns the entries of a dict or OrderedDict in insertion
// order, with Python semantics for repeated keys (the last value wins, at
// the position of the first).
func dictEntries(v any) ([]entry, bool) {
	var out []entry
	switch d := v.(type) {
	case *types.OrderedDict:
		for el := d.List.Front(); el != nil; el = el.Next() {
			e := el.Value.(*types.OrderedDictEntry)
			out = append(out, entry{e.Key, e.Value})
		}
		return out, true
	case *types.Dict:
		pos := map[any]int{}
		for _, e := range *d {
			if isHashable(e.Key) {
				if i, ok := pos[e.Key]; ok {
					out[i].value = e.Value
					continue
				}
				pos[e.Key] = len(out)
			}
			out = append(out, entry{e.Key, e.Value})
		}
		return out, true
	}
	return nil, false
}

// isHashable reports whether k can be a Go map key without panicking.
func isHashable(k any) bool {
	switch k.(type) {
	case nil, bool, int, float64, string:
		return true
	}
	return false
}

// isTensorDict reports whether every key is a string and every value a
// tensor.
func isTensorDict(entries []entry) bool {
	for _, e := range entries {
		if _, ok := e.key.(string); !ok {
			return false
		}
		if _, ok := e.value.(*tensorRef); !ok {
			return false
		}
	}
	return true
}

func lookup(entries []entry, key string) (any, bool) {
	for _, e := range entries {
		if k, ok := e.key.(string); ok && k == key {
			return e.value, true
		}
	}
	return nil, false
}

func keyList(entries []entry) string {
	var keys []string
	for _, e := range entries {
		keys = append(keys, fmt.Sprintf("%q", fmt.Sprint(e.key)))
	}
	if len(keys) == 0 {
		return "none"
	}
	return strings.Join(keys, ", ")
}

const (
	maxExtraDepth = 64
	maxExtraNodes = 1 << 20
)

// convert turns a decoded value without tensors into plain Go values; see
// StateDict.Extra. It fails for tensors, unknown objects, structures nested
// deeper than maxExtraDepth (including cycles) and after budget nodes.
func convert(v any, depth int, budget *int) (any, bool) {
	*budget--
	if *budget < 0 || depth > maxExtraDepth {
		return nil, false
	}
	switch x := v.(type) {
	case nil, bool, int, float64, string:
		return x, true
	case []byte:
		return bytes.Clone(x), true
	case *types.Tuple:
		return convertSlice(*x, depth, budget)
	case *types.List:
		return convertSlice(*x, depth, budget)
	case *types.Dict, *types.OrderedDict:
		entries, _ := dictEntries(x)
		m := make(map[string]any, len(entries))
		for _, e := range entries {
			k, ok := convert(e.key, depth+1, budget)
			if !ok {
				return nil, false
			}
			if k == nil || isScalar(k) {
				cv, ok := convert(e.value, depth+1, budget)
				if !ok {
					return nil, false
				}
				m[fmt.Sprint(k)] = cv
				continue
			}
			return nil, false
		}
		return m, true
	}
	if b, ok := v.(*big.Int); ok {
		return new(big.Int).Set(b), true
	}
	return nil, false
}

func isScalar(v any) bool {
	switch v.(type) {
	case bool, int, float64, string:
		return true
	}
	return false
}

func convertSlice(items []any, depth int, budget *int) (any, bool) {
	out := make([]any, len(items))
	for i, it := range items {
		v, ok := convert(it, depth+1, budget)
		if !ok {
			return nil, false
		}
		out[i] = v
	}
	return out, true
}

// maxBroadcastBytes bounds the materialised size of views with more
// elements than their storage (zero or overlapping strides).
const maxBroadcastBytes = 1 << 30

// materialize checks the view against its storage and copies it into
// contiguous row-major bytes. If mayAlias is set and the view is the whole
// storage in order, the storage bytes themselves are returned (aliased is
// then true) to avoid a copy.
func (t *tensorRef) materialize(src storageSource, mayAlias bool) (data []byte, aliased bool, err error) {
	esize := dtypeSizes[t.storage.dtype]
	storageBytes := t.storage.numel * esize // persistentLoad bounds numel
	// Number of elements, and the largest storage index the view touches.
	numel := uint64(1)
	for _, d := range t.shape {
		hi, lo := bits.Mul64(numel, uint64(d))
		if hi != 0 || lo > 1<<62 {
			return nil, false, fmt.Errorf("shape %v is too large", t.shape)
		}
		numel = lo
	}
	if numel == 0 {
		return []byte{}, false, nil
	}
	last := uint64(t.offset)
	for i, d := range t.shape {
		hi, lo := bits.Mul64(uint64(d-1), uint64(t.stride[i]))
		sum, carry := bits.Add64(last, lo, 0)
		if hi != 0 || carry != 0 {
			return nil, false, fmt.Errorf("view (offset %d, shape %v, stride %v) overflows", t.offset, t.shape, t.stride)
		}
		last = sum
	}
	if last >= uint64(t.storage.numel) {
		return nil, false, fmt.Errorf("view (offset %d, shape %v, stride %v) exceeds its storage of %d elements",
			t.offset, t.shape, t.stride, t.storage.numel)
	}
	hi, outBytes := bits.Mul64(numel, uint64(esize))
	if hi != 0 || (outBytes > uint64(storageBytes) && outBytes > maxBroadcastBytes) {
		return nil, false, fmt.Errorf("view (shape %v, stride %v) would take %d bytes, more than its storage", t.shape, t.stride, outBytes)
	}
	data, err = src.storage(t.storage.key, storageBytes)
	if err != nil {
		return nil, false, err
	}
	// Fast path: a contiguous row-major view is a single copy, or none.
	contiguous, expect := true, int64(1)
	for i := len(t.shape) - 1; i >= 0; i-- {
		if t.shape[i] != 1 && t.stride[i] != expect {
			contiguous = false
			break
		}
		expect *= t.shape[i]
	}
	if contiguous && mayAlias && t.offset == 0 && int64(outBytes) == storageBytes {
		return data, true, nil
	}
	out := make([]byte, outBytes)
	if contiguous {
		copy(out, data[t.offset*esize:])
		return out, false, nil
	}

	// General case: walk the indices like an odometer, copying runs of the
	// innermost dimension.
	nd := len(t.shape)
	inner, innerStride := t.shape[nd-1], t.stride[nd-1]
	idx := make([]int64, nd)
	pos := t.offset // storage index of idx
	for o := int64(0); o < int64(outBytes); {
		if innerStride == 1 {
			n := inner * esize
			copy(out[o:o+n], data[pos*esize:])
			o += n
		} else {
			for j := int64(0); j < inner; j++ {
				p := (pos + j*innerStride) * esize
				copy(out[o:o+esize], data[p:p+esize])
				o += esize
			}
		}
		// Advance the outer dimensions.
		for d := nd - 2; d >= 0; d-- {
			idx[d]++
			pos += t.stride[d]
			if idx[d] < t.shape[d] {
				break
			}
			pos -= t.stride[d] * t.shape[d]
			idx[d] = 0
		}
	}
	return out, false, nil
}
