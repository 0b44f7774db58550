package pickle

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"math/big"
	"strconv"

	gopickle "github.com/nlpodyssey/gopickle/pickle"
	"github.com/nlpodyssey/gopickle/types"
)

// RefusedGlobalError reports a pickle that refers to a Python global outside
// the allowlist (see [Load]). Nothing is ever executed for such a global.
type RefusedGlobalError struct {
	Module, Name string
}

// Error formats the error as `refused global "module.name"`.
func (e *RefusedGlobalError) Error() string {
	return fmt.Sprintf("refused global %q", e.Module+"."+e.Name)
}

// storageDTypes maps the allowlisted legacy storage classes to dtypes.
var storageDTypes = map[string]string{
	"torch.DoubleStorage":   "F64",
	"torch.FloatStorage":    "F32",
	"torch.HalfStorage":     "F16",
	"torch.BFloat16Storage": "BF16",
	"torch.LongStorage":     "I64",
	"torch.IntStorage":      "I32",
	"torch.ShortStorage":    "I16",
	"torch.CharStorage":     "I8",
	"torch.ByteStorage":     "U8",
	"torch.BoolStorage":     "BOOL",
}

// dtypeSizes gives the element size of each dtype.
var dtypeSizes = map[string]int64{
	"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1,
}

// allowed reports whether the global module.name may be resolved.
func allowed(module, name string) bool {
	full := module + "." + name
	switch full {
	case "collections.OrderedDict",
		"torch._utils._rebuild_tensor_v2",
		"torch._utils._rebuild_parameter",
		"torch._utils._rebuild_parameter_with_state":
		return true
	}
	_, ok := storageDTypes[full]
	return ok
}

// findClass resolves the allowlisted globals (gopickle resolves
// collections.OrderedDict itself) and refuses everything else.
func findClass(module, name string) (any, error) {
	full := module + "." + name
	switch full {
	case "torch._utils._rebuild_tensor_v2":
		return rebuildTensorV2{}, nil
	case "torch._utils._rebuild_parameter", "torch._utils._rebuild_parameter_with_state":
		return rebuildParameter{name: name}, nil
	}
	if dt, ok := storageDTypes[full]; ok {
		return &storageType{name: full, dtype: dt}, nil
	}
	return nil, &RefusedGlobalError{Module: module, Name: name}
}

// storageType is an allowlisted storage class such as torch.FloatStorage. It
// is only usable as the type field of a persistent id.
type storageType struct {
	name  string
	dtype string
}

// storageRef is a storage of the archive, resolved from a persistent id.
// Its bytes are read on first use.
type storageRef struct {
	key   string
	dtype string
	numel int64
}

// tensorRef is a tensor rebuilt by _rebuild_tensor_v2: a strided view of a
// storage. It is materialised only if it is part of the selected state dict.
type tensorRef struct {
	storage *storageRef
	offset  int64
	shape   []int64
	stride  []int64
}

// rebuildTensorV2 implements torch._utils._rebuild_tensor_v2(storage,
// storage_offset, size, stride, requires_grad, backward_hooks[, metadata]).
type rebuildTensorV2 struct{}

// Call validates the arguments and returns a *tensorRef.
func (rebuildTensorV2) Call(args ...any) (any, error) {
	if len(args) != 6 && len(args) != 7 {
		return nil, fmt.Errorf("_rebuild_tensor_v2: got %d arguments, want 6 or 7", len(args))
	}
	st, ok := args[0].(*storageRef)
	if !ok {
		return nil, fmt.Errorf("_rebuild_tensor_v2: argument 1 is %s, not a storage", typeName(args[0]))
	}
	offset, ok := toInt64(args[1])
	if !ok || offset < 0 {
		return nil, fmt.Errorf("_rebuild_tensor_v2: invalid storage offset %v", args[1])
	}
	shape, ok := toInt64s(args[2])
	if !ok {
		return nil, fmt.Errorf("_rebuild_tensor_v2: invalid size %v", args[2])
	}
	stride, ok := toInt64s(args[3])
	if !ok {
		return nil, fmt.Errorf("_rebuild_tensor_v2: invalid stride %v", args[3])
	}
	if len(shape) != len(stride) {
		return nil, fmt.Errorf("_rebuild_tensor_v2: size %v and stride %v differ in length", shape, stride)
	}
	for i := range shape {
		if shape[i] < 0 || stride[i] < 0 {
			return nil, fmt.Errorf("_rebuild_tensor_v2: negative size %v or stride %v", shape, stride)
		}
	}
	if _, ok := args[4].(bool); !ok {
		return nil, fmt.Errorf("_rebuild_tensor_v2: requires_grad is %s, not a bool", typeName(args[4]))
	}
	return &tensorRef{storage: st, offset: offset, shape: shape, stride: stride}, nil
}

// rebuildParameter implements torch._utils._rebuild_parameter(data,
// requires_grad, backward_hooks) and _rebuild_parameter_with_state(...,
// state): a Parameter is loaded as its data tensor.
type rebuildParameter struct{ name string }

// Call returns its first argument, which must be a tensor.
func (r rebuildParameter) Call(args ...any) (any, error) {
	if len(args) < 3 || len(args) > 4 {
		return nil, fmt.Errorf("%s: got %d arguments", r.name, len(args))
	}
	t, ok := args[0].(*tensorRef)
	if !ok {
		return nil, fmt.Errorf("%s: argument 1 is %s, not a tensor", r.name, typeName(args[0]))
	}
	return t, nil
}

// persistentLoad resolves ('storage', storage_type, key, location, numel).
func persistentLoad(pid any) (any, error) {
	t, ok := pid.(*types.Tuple)
	if !ok || t.Len() != 5 {
		return nil, fmt.Errorf("unsupported persistent id %s", typeName(pid))
	}
	if tag, _ := t.Get(0).(string); tag != "storage" {
		return nil, fmt.Errorf("unsupported persistent id tag %v", t.Get(0))
	}
	st, ok := t.Get(1).(*storageType)
	if !ok {
		return nil, fmt.Errorf("persistent id: storage type is %s", typeName(t.Get(1)))
	}
	key, ok := t.Get(2).(string)
	if !ok || key == "" {
		return nil, fmt.Errorf("persistent id: invalid storage key %v", t.Get(2))
	}
	if _, ok := t.Get(3).(string); !ok {
		return nil, fmt.Errorf("persistent id: invalid location %v", t.Get(3))
	}
	numel, ok := toInt64(t.Get(4))
	if !ok || numel < 0 || numel > math.MaxInt64/8 {
		return nil, fmt.Errorf("persistent id: invalid storage size %v", t.Get(4))
	}
	return &storageRef{key: key, dtype: st.dtype, numel: numel}, nil
}

// unpickle decodes a torch data.pkl. The stream is first checked by
// prescan, so that only allowlisted globals can be resolved; gopickle then
// builds the object graph, and any panic inside it becomes an error.
func unpickle(data []byte) (result any, err error) {
	return unpickleWith(data, allowed, findClass)
}

// unpickleWith is unpickle with another allowlist and class resolver (the
// TorchScript reader adds the archive's own __torch__ classes).
func unpickleWith(data []byte, allow func(module, name string) bool, find func(module, name string) (any, error)) (result any, err error) {
	if err := prescan(data, allow); err != nil {
		return nil, err
	}
	defer func() {
		if r := recover(); r != nil {
			result, err = nil, fmt.Errorf("malformed pickle: %v", r)
		}
	}()
	u := gopickle.NewUnpickler(newByteReader(data))
	u.FindClass = find
	u.PersistentLoad = persistentLoad
	u.GetExtension = func(code int) (any, error) {
		return nil, fmt.Errorf("pickle extension codes are not supported")
	}
	return u.Load()
}

// byteReader is a minimal io.Reader + io.ByteReader over a byte slice.
type byteReader struct {
	data []byte
	pos  int
}

func newByteReader(b []byte) *byteReader { return &byteReader{data: b} }

func (r *byteReader) Read(p []byte) (int, error) {
	if r.pos >= len(r.data) {
		return 0, errEOF
	}
	n := copy(p, r.data[r.pos:])
	r.pos += n
	return n, nil
}

func (r *byteReader) ReadByte() (byte, error) {
	if r.pos >= len(r.data) {
		return 0, errEOF
	}
	b := r.data[r.pos]
	r.pos++
	return b, nil
}

var errEOF = errors.New("unexpected end of pickle data")

const (
	// maxMarkDepth bounds the nesting of MARK opcodes.
	maxMarkDepth = 4096
	// maxLongBytes bounds the size of arbitrary-precision integers, which
	// gopickle decodes in quadratic time.
	maxLongBytes = 256
)

// prescan walks the opcodes of a pickle up to STOP without executing them.
// It rejects unknown and unsupported opcodes, arguments that run past the
// end of the data, and any GLOBAL, INST or STACK_GLOBAL whose target is not
// allowlisted. For STACK_GLOBAL the module and name strings are traced
// through the memo; if they cannot be determined the stream is refused.
func prescan(data []byte, allow func(module, name string) bool) error {
	type shadow struct {
		s     string
		known bool
	}
	var (
		pos    int
		depth  int
		memo   = map[int]shadow{}
		recent []shadow // values pushed since the last opcode not traced; recent[len-1] is the stack top
	)
	need := func(n uint64) error {
		if n > uint64(len(data)-pos) {
			return errEOF
		}
		return nil
	}
	fixed := func(n int) ([]byte, error) {
		if err := need(uint64(n)); err != nil {
			return nil, err
		}
		b := data[pos : pos+n]
		pos += n
		return b, nil
	}
	line := func() (string, error) {
		for i := pos; i < len(data); i++ {
			if data[i] == '\n' {
				s := string(data[pos:i])
				pos = i + 1
				return s, nil
			}
		}
		return "", errEOF
	}
	counted := func(n uint64) (string, error) {
		if err := need(n); err != nil {
			return "", err
		}
		s := string(data[pos : pos+int(n)])
		pos += int(n)
		return s, nil
	}
	top := func() shadow {
		if len(recent) == 0 {
			return shadow{}
		}
		return recent[len(recent)-1]
	}
	checkGlobal := func() error {
		module, err := line()
		if err != nil {
			return err
		}
		name, err := line()
		if err != nil {
			return err
		}
		if !allow(module, name) {
			return &RefusedGlobalError{Module: module, Name: name}
		}
		return nil
	}

	for {
		if pos >= len(data) {
			return fmt.Errorf("pickle data ends before STOP: %w", errEOF)
		}
		op := data[pos]
		pos++
		var (
			err    error
			s      string
			push   *shadow // traced push, if any
			traced bool    // opcode leaves the stack as traced
		)
		switch op {
		// No argument.
		case '(':
			depth++
			if depth > maxMarkDepth {
				return fmt.Errorf("pickle nests MARK deeper than %d", maxMarkDepth)
			}
		case 't', 'l', 'd', 'u', 'e', 'o', '1', 0x90, 0x91:
			depth--
		case '.':
			return nil
		case '0', '2', 'N', 'Q', 'R', 'a', 'b', '}', ']', 's', ')',
			0x81, 0x85, 0x86, 0x87, 0x88, 0x89, 0x8f, 0x92:
		case 0x94: // MEMOIZE
			memo[len(memo)] = top()
			traced = true

		// Fixed-size argument.
		case 'K', 'h', 'q', 0x80: // BININT1, BINGET, BINPUT, PROTO
			var b []byte
			if b, err = fixed(1); err == nil {
				switch op {
				case 'h':
					v := memo[int(b[0])]
					push = &v
				case 'q':
					memo[int(b[0])] = top()
					traced = true
				case 0x80:
					traced = true
				}
			}
		case 'M':
			_, err = fixed(2)
		case 'J', 'j', 'r': // BININT, LONG_BINGET, LONG_BINPUT
			var b []byte
			if b, err = fixed(4); err == nil {
				i := int(binary.LittleEndian.Uint32(b))
				switch op {
				case 'j':
					v := memo[i]
					push = &v
				case 'r':
					memo[i] = top()
					traced = true
				}
			}
		case 'G':
			_, err = fixed(8)
		case 0x95: // FRAME
			var b []byte
			if b, err = fixed(8); err == nil {
				err = need(binary.LittleEndian.Uint64(b))
				traced = true
			}

		// Newline-terminated argument.
		case 'F', 'I', 'L', 'P':
			if s, err = line(); err == nil && op == 'L' && len(s) > maxLongBytes {
				return fmt.Errorf("LONG literal of %d digits is too long", len(s))
			}
		case 'g', 'p': // GET, PUT
			if s, err = line(); err == nil {
				i, perr := strconv.Atoi(s)
				if perr != nil || i < 0 {
					return fmt.Errorf("invalid memo index %q", s)
				}
				if op == 'g' {
					v := memo[i]
					push = &v
				} else {
					memo[i] = top()
					traced = true
				}
			}
		case 'S': // STRING: quoted, gopickle strips the quotes
			if s, err = line(); err == nil {
				if len(s) < 2 || s[0] != s[len(s)-1] || (s[0] != '\'' && s[0] != '"') {
					return fmt.Errorf("the STRING opcode argument must be quoted")
				}
				push = &shadow{s: s[1 : len(s)-1], known: true}
			}
		case 'V': // UNICODE
			if s, err = line(); err == nil {
				push = &shadow{s: s, known: true}
			}
		case 'c', 'i': // GLOBAL, INST
			err = checkGlobal()
			if op == 'i' {
				depth--
			}

		// Length-prefixed argument.
		case 'U', 0x8c: // SHORT_BINSTRING, SHORT_BINUNICODE
			var b []byte
			if b, err = fixed(1); err == nil {
				if s, err = counted(uint64(b[0])); err == nil {
					push = &shadow{s: s, known: true}
				}
			}
		case 'C': // SHORT_BINBYTES
			var b []byte
			if b, err = fixed(1); err == nil {
				_, err = counted(uint64(b[0]))
			}
		case 'X', 'T', 'B': // BINUNICODE, BINSTRING, BINBYTES
			var b []byte
			if b, err = fixed(4); err == nil {
				n := binary.LittleEndian.Uint32(b)
				if op == 'T' && int32(n) < 0 {
					return fmt.Errorf("BINSTRING with negative length")
				}
				if s, err = counted(uint64(n)); err == nil && op != 'B' {
					push = &shadow{s: s, known: true}
				}
			}
		case 0x8d, 0x8e, 0x96: // BINUNICODE8, BINBYTES8, BYTEARRAY8
			var b []byte
			if b, err = fixed(8); err == nil {
				if s, err = counted(binary.LittleEndian.Uint64(b)); err == nil && op == 0x8d {
					push = &shadow{s: s, known: true}
				}
			}
		case 0x8a, 0x8b: // LONG1, LONG4
			var b []byte
			var n uint64
			if op == 0x8a {
				if b, err = fixed(1); err == nil {
					n = uint64(b[0])
				}
			} else if b, err = fixed(4); err == nil {
				if int32(binary.LittleEndian.Uint32(b)) < 0 {
					return fmt.Errorf("LONG4 with negative length")
				}
				n = uint64(binary.LittleEndian.Uint32(b))
			}
			if err == nil {
				if n == 0 || n > maxLongBytes {
					return fmt.Errorf("LONG opcode of %d bytes is not supported", n)
				}
				_, err = counted(n)
			}

		case 0x93: // STACK_GLOBAL
			if len(recent) < 2 || !recent[len(recent)-2].known || !recent[len(recent)-1].known {
				return fmt.Errorf("refused STACK_GLOBAL whose module and name cannot be verified")
			}
			module, name := recent[len(recent)-2].s, recent[len(recent)-1].s
			if !allowed(module, name) {
				return &RefusedGlobalError{Module: module, Name: name}
			}
		case 0x82, 0x83, 0x84:
			return fmt.Errorf("pickle extension codes are not supported")
		case 0x97, 0x98:
			return fmt.Errorf("out-of-band pickle buffers are not supported")
		default:
			return fmt.Errorf("unknown pickle opcode 0x%02x at offset %d", op, pos-1)
		}
		if err != nil {
			return err
		}
		if depth < 0 {
			depth = 0 // gopickle reports the missing MARK
		}
		switch {
		case push != nil:
			recent = append(recent, *push)
		case !traced:
			recent = recent[:0]
		}
	}
}

// toInt64 converts a pickled Python int.
func toInt64(v any) (int64, bool) {
	switch x := v.(type) {
	case int:
		return int64(x), true
	case *big.Int:
		if x.IsInt64() {
			return x.Int64(), true
		}
	}
	return 0, false
}

// toInt64s converts a tuple or list of ints.
func toInt64s(v any) ([]int64, bool) {
	var items []any
	switch x := v.(type) {
	case *types.Tuple:
		items = *x
	case *types.List:
		items = *x
	default:
		return nil, false
	}
	out := make([]int64, len(items))
	for i, it := range items {
		n, ok := toInt64(it)
		if !ok {
			return nil, false
		}
		out[i] = n
	}
	return out, true
}

// typeName describes a decoded value in error messages.
func typeName(v any) string {
	if v == nil {
		return "None"
	}
	return fmt.Sprintf("%T", v)
}
