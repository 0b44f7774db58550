// Package safetensors reads and writes the safetensors weight format
// (https://github.com/huggingface/safetensors) in pure Go.
//
// [Open] maps a file read-only and validates its header completely before
// returning: every tensor has a known dtype, a non-negative shape and
// data_offsets that lie inside the data section and match the shape. Tensor
// data is never copied onto the Go heap; [File.Data] returns slices of the
// mapping. Sharded checkpoints (a *.safetensors.index.json index plus shard
// files) are read with [OpenIndex], and [Save] writes a file atomically.
//
// The package deliberately has no dependency on libtorch; converting the raw
// little-endian bytes into tensors is left to its callers.
package safetensors

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"math/bits"
	"os"
	"slices"
	"strings"
)

// MaxHeaderSize is the largest JSON header accepted, in bytes (the limit of
// the reference implementation).
const MaxHeaderSize = 100_000_000

// Sentinel errors; test for them with [errors.Is].
var (
	// ErrFormat is matched by every error that reports a malformed file.
	ErrFormat = errors.New("invalid safetensors data")
	// ErrNotFound is matched when a tensor name is not in the file.
	ErrNotFound = errors.New("tensor not found")
	// ErrClosed is matched when a closed File is used.
	ErrClosed = errors.New("file already closed")
)

// Error describes a failure concerning a file and, where it applies, one
// tensor of it. It prints as
//
//	safetensors: model.safetensors: tensor "a.weight": data_offsets [0 400] exceed data size 390
type Error struct {
	Path   string // file concerned, as given by the caller
	Tensor string // tensor concerned, or ""
	Err    error  // underlying problem
}

// Error formats the error as "safetensors: <path>[: tensor <name>]: <problem>".
func (e *Error) Error() string {
	var sb strings.Builder
	sb.WriteString("safetensors: ")
	sb.WriteString(e.Path)
	if e.Tensor != "" {
		fmt.Fprintf(&sb, ": tensor %q", e.Tensor)
	}
	sb.WriteString(": ")
	sb.WriteString(e.Err.Error())
	return sb.String()
}

// Unwrap returns the underlying error.
func (e *Error) Unwrap() error { return e.Err }

// formatError is a validation failure; it matches [ErrFormat].
type formatError struct{ msg string }

func (e *formatError) Error() string        { return e.msg }
func (e *formatError) Is(target error) bool { return target == ErrFormat }

func errFormat(format string, args ...any) error {
	return &formatError{msg: fmt.Sprintf(format, args...)}
}

// TensorInfo describes one tensor of a file.
type TensorInfo struct {
	Name    string
	DType   DType
	Shape   []int64
	Offsets [2]int64 // [begin, end) of the data, relative to the data section
}

// NumElements returns the number of elements (1 for a 0-d tensor).
func (t TensorInfo) NumElements() int64 {
	n := int64(1)
	for _, d := range t.Shape {
		n *= d
	}
	return n
}

// Reader is implemented by [*File] and [*Sharded].
type Reader interface {
	// Names returns the tensor names in sorted order.
	Names() []string
	// Info describes the named tensor.
	Info(name string) (TensorInfo, bool)
	// Data returns the raw little-endian bytes of the named tensor. The
	// slice is only valid until Close and must not be modified.
	Data(name string) ([]byte, error)
	// Close releases the underlying files and mappings.
	Close() error
}

var (
	_ Reader = (*File)(nil)
	_ Reader = (*Sharded)(nil)
)

// OpenAny opens a sharded checkpoint when path ends in ".index.json" and a
// single safetensors file otherwise.
func OpenAny(path string) (Reader, error) {
	if strings.HasSuffix(path, ".index.json") {
		return OpenIndex(path)
	}
	return Open(path)
}

// File is an open, validated safetensors file. Its methods other than Close
// may be called concurrently.
type File struct {
	path     string
	mapping  []byte // whole file; nil after Close
	data     []byte // data section (sub-slice of mapping)
	tensors  map[string]TensorInfo
	names    []string
	metadata map[string]string
	unmap    func([]byte) error
}

// Open maps the safetensors file at path read-only and validates its header.
// The caller must Close the returned File. As with any memory mapping, the
// file must not be truncated while it is open.
func Open(path string) (*File, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, &Error{Path: path, Err: err}
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, &Error{Path: path, Err: err}
	}
	if !st.Mode().IsRegular() {
		return nil, &Error{Path: path, Err: errFormat("not a regular file")}
	}
	size := st.Size()
	if size < 8 {
		return nil, &Error{Path: path, Err: errFormat("file too small (%d bytes, need at least 8)", size)}
	}
	var lenBuf [8]byte
	if _, err := f.ReadAt(lenBuf[:], 0); err != nil {
		return nil, &Error{Path: path, Err: err}
	}
	if err := checkHeaderLen(binary.LittleEndian.Uint64(lenBuf[:]), size); err != nil {
		return nil, &Error{Path: path, Err: err}
	}
	m, unmap, err := mapFile(f, size)
	if err != nil {
		return nil, &Error{Path: path, Err: fmt.Errorf("mmap: %w", err)}
	}
	sf, err := parse(path, m)
	if err != nil {
		_ = unmap(m)
		return nil, err
	}
	sf.unmap = unmap
	return sf, nil
}

func checkHeaderLen(n uint64, fileSize int64) error {
	if n > MaxHeaderSize {
		return errFormat("header length %d exceeds the limit of %d bytes", n, MaxHeaderSize)
	}
	if n > uint64(fileSize-8) {
		return errFormat("header length %d exceeds the %d bytes that follow it (truncated file?)", n, fileSize-8)
	}
	return nil
}

// headerEntry is one tensor entry of the JSON header. Pointers distinguish
// absent fields from zero values.
type headerEntry struct {
	DType       *string  `json:"dtype"`
	Shape       *[]int64 `json:"shape"`
	DataOffsets *[]int64 `json:"data_offsets"`
}

// parse validates buf, the complete contents of the file at path, and
// returns a File whose slices point into buf.
func parse(path string, buf []byte) (*File, error) {
	fail := func(tensor string, err error) (*File, error) {
		return nil, &Error{Path: path, Tensor: tensor, Err: err}
	}
	if len(buf) < 8 {
		return fail("", errFormat("file too small (%d bytes, need at least 8)", len(buf)))
	}
	n := binary.LittleEndian.Uint64(buf)
	if err := checkHeaderLen(n, int64(len(buf))); err != nil {
		return fail("", err)
	}
	header := buf[8 : 8+n]
	data := buf[8+n:]

	if t := bytes.TrimLeft(header, " \t\r\n"); len(t) == 0 || t[0] != '{' {
		return fail("", errFormat("header is not a JSON object"))
	}
	var raw map[string]json.RawMessage
	if err := json.Unmarshal(header, &raw); err != nil {
		return fail("", errFormat("header is not valid JSON: %v", err))
	}

	sf := &File{
		path:     path,
		mapping:  buf,
		data:     data,
		tensors:  make(map[string]TensorInfo, len(raw)),
		metadata: map[string]string{},
	}
	for name, msg := range raw {
		if name == "__metadata__" {
			if err := json.Unmarshal(msg, &sf.metadata); err != nil || sf.metadata == nil {
				return fail("", errFormat("__metadata__ is not an object of strings"))
			}
			continue
		}
		sf.names = append(sf.names, name)
	}
	slices.Sort(sf.names)
	for _, name := range sf.names {
		info, err := parseEntry(name, raw[name], int64(len(data)))
		if err != nil {
			return fail(name, err)
		}
		sf.tensors[name] = info
	}
	return sf, nil
}

func parseEntry(name string, msg json.RawMessage, dataSize int64) (TensorInfo, error) {
	var e headerEntry
	if err := json.Unmarshal(msg, &e); err != nil {
		return TensorInfo{}, errFormat("invalid entry: %v", err)
	}
	switch {
	case e.DType == nil:
		return TensorInfo{}, errFormat("missing dtype")
	case e.Shape == nil:
		return TensorInfo{}, errFormat("missing shape")
	case e.DataOffsets == nil:
		return TensorInfo{}, errFormat("missing data_offsets")
	}
	dt := DType(*e.DType)
	if !dt.Known() {
		return TensorInfo{}, errFormat("unknown dtype %q", *e.DType)
	}
	shape := *e.Shape
	if shape == nil {
		shape = []int64{}
	}
	numel, ok := numElements(shape)
	if !ok {
		return TensorInfo{}, errFormat("invalid shape %v", shape)
	}
	offs := *e.DataOffsets
	if len(offs) != 2 {
		return TensorInfo{}, errFormat("data_offsets %v must have 2 elements", offs)
	}
	begin, end := offs[0], offs[1]
	if begin < 0 || begin > end {
		return TensorInfo{}, errFormat("invalid data_offsets %v", offs)
	}
	if end > dataSize {
		return TensorInfo{}, errFormat("data_offsets %v exceed data size %d", offs, dataSize)
	}
	hi, nbytes := bits.Mul64(numel, uint64(dt.Size()))
	if hi != 0 || nbytes != uint64(end-begin) {
		return TensorInfo{}, errFormat("shape %v of %s needs %d elements × %d bytes, but data_offsets %v span %d bytes",
			shape, dt, numel, dt.Size(), offs, end-begin)
	}
	return TensorInfo{Name: name, DType: dt, Shape: shape, Offsets: [2]int64{begin, end}}, nil
}

// numElements returns the product of shape, or false if a dimension is
// negative or the product overflows int64.
func numElements(shape []int64) (uint64, bool) {
	n := uint64(1)
	for _, d := range shape {
		if d < 0 {
			return 0, false
		}
		hi, lo := bits.Mul64(n, uint64(d))
		if hi != 0 || lo > 1<<62 {
			return 0, false
		}
		n = lo
	}
	return n, true
}

// Path returns the path the file was opened with.
func (f *File) Path() string { return f.path }

// Names returns the tensor names in sorted order.
func (f *File) Names() []string { return slices.Clone(f.names) }

// Info describes the named tensor.
func (f *File) Info(name string) (TensorInfo, bool) {
	t, ok := f.tensors[name]
	t.Shape = slices.Clone(t.Shape)
	return t, ok
}

// Data returns the raw little-endian bytes of the named tensor, a slice of
// the read-only mapping: it must not be modified (doing so crashes the
// program) and must not be used after Close.
func (f *File) Data(name string) ([]byte, error) {
	if f.mapping == nil {
		return nil, &Error{Path: f.path, Tensor: name, Err: ErrClosed}
	}
	t, ok := f.tensors[name]
	if !ok {
		return nil, &Error{Path: f.path, Tensor: name, Err: ErrNotFound}
	}
	return f.data[t.Offsets[0]:t.Offsets[1]:t.Offsets[1]], nil
}

// Release tells the system that the named tensor's data will not be read
// again soon: its pages of the mapping leave the process's resident set
// (on Linux; the page cache keeps them, and Data still works). A loader
// that copies each tensor out once then holds the file in page cache, which
// processes reading the same file share, not in each process's memory.
func (f *File) Release(name string) {
	if f.mapping == nil || f.unmap == nil {
		return
	}
	if t, ok := f.tensors[name]; ok {
		releasePages(f.data[t.Offsets[0]:t.Offsets[1]])
	}
}

// Metadata returns a copy of the header's __metadata__ map (empty if the
// file has none).
func (f *File) Metadata() map[string]string {
	m := make(map[string]string, len(f.metadata))
	for k, v := range f.metadata {
		m[k] = v
	}
	return m
}

// Close unmaps the file. It is safe to call more than once; it must not run
// concurrently with other methods.
func (f *File) Close() error {
	if f.mapping == nil {
		return nil
	}
	m := f.mapping
	f.mapping, f.data = nil, nil
	if f.unmap == nil {
		return nil
	}
	if err := f.unmap(m); err != nil {
		return &Error{Path: f.path, Err: fmt.Errorf("munmap: %w", err)}
	}
	return nil
}
