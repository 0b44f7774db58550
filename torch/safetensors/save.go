package safetensors

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"unicode/utf8"
)

// Tensor is a tensor to be written by [Save].
type Tensor struct {
	Name  string
	DType DType
	Shape []int64
	Data  []byte // raw little-endian, row-major, contiguous
	// Source, when Data is nil, gives the data when Save writes the
	// tensor, after the tensors before it: a caller copying tensors out
	// of libtorch then holds one copy at a time, not the whole file's.
	Source func() ([]byte, error)
}

// size is the number of data bytes the tensor's shape and dtype take.
func (t Tensor) size() (int64, bool) {
	numel, ok := numElements(t.Shape)
	if !ok {
		return 0, false
	}
	return int64(numel) * int64(t.DType.Size()), true
}

type saveEntry struct {
	DType       DType    `json:"dtype"`
	Shape       []int64  `json:"shape"`
	DataOffsets [2]int64 `json:"data_offsets"`
}

// Save writes tensors and metadata (which may be nil) to a safetensors file
// at path. The header lists its keys in sorted order and is padded with
// spaces to a multiple of 8 bytes; tensor data follows in name order. The
// file is written to a temporary file in the same directory and renamed
// into place, so path never holds a partially written file.
func Save(path string, tensors []Tensor, metadata map[string]string) (err error) {
	fail := func(tensor string, err error) error { return &Error{Path: path, Tensor: tensor, Err: err} }

	sorted := slices.Clone(tensors)
	slices.SortFunc(sorted, func(a, b Tensor) int { return strings.Compare(a.Name, b.Name) })
	header := make(map[string]any, len(sorted)+1)
	if len(metadata) > 0 {
		header["__metadata__"] = metadata
	}
	var offset int64
	for i, t := range sorted {
		switch {
		case t.Name == "":
			return fail("", errFormat("empty tensor name"))
		case t.Name == "__metadata__":
			return fail(t.Name, errFormat("reserved tensor name"))
		case i > 0 && sorted[i-1].Name == t.Name:
			return fail(t.Name, errFormat("duplicate tensor name"))
		case !utf8.ValidString(t.Name):
			return fail(t.Name, errFormat("tensor name is not valid UTF-8"))
		case !t.DType.Known():
			return fail(t.Name, errFormat("unknown dtype %q", string(t.DType)))
		}
		n, ok := t.size()
		if !ok {
			return fail(t.Name, errFormat("invalid shape %v", t.Shape))
		}
		if t.Data == nil && t.Source != nil {
			// checked when written
		} else if int64(len(t.Data)) != n {
			return fail(t.Name, errFormat("shape %v of %s needs %d bytes of data, got %d", t.Shape, t.DType, n, len(t.Data)))
		}
		shape := t.Shape
		if shape == nil {
			shape = []int64{}
		}
		header[t.Name] = saveEntry{DType: t.DType, Shape: shape, DataOffsets: [2]int64{offset, offset + n}}
		offset += n
	}
	for k, v := range metadata {
		if !utf8.ValidString(k) || !utf8.ValidString(v) {
			return fail("", errFormat("metadata %q is not valid UTF-8", k))
		}
	}
	var hb bytes.Buffer
	enc := json.NewEncoder(&hb)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(header); err != nil {
		return fail("", fmt.Errorf("encoding header: %w", err))
	}
	hdr := bytes.TrimSuffix(hb.Bytes(), []byte("\n"))
	if pad := (8 - len(hdr)%8) % 8; pad > 0 {
		hdr = append(hdr, bytes.Repeat([]byte{' '}, pad)...)
	}

	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return fail("", err)
	}
	defer func() {
		if err != nil {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()
	w := bufio.NewWriterSize(tmp, 1<<20)
	var lenBuf [8]byte
	binary.LittleEndian.PutUint64(lenBuf[:], uint64(len(hdr)))
	w.Write(lenBuf[:])
	w.Write(hdr)
	for _, t := range sorted {
		data := t.Data
		if data == nil && t.Source != nil {
			if data, err = t.Source(); err != nil {
				return fail(t.Name, err)
			}
			if n, _ := t.size(); int64(len(data)) != n {
				return fail(t.Name, errFormat("shape %v of %s needs %d bytes of data, its source gave %d", t.Shape, t.DType, n, len(data)))
			}
		}
		if _, err = w.Write(data); err != nil {
			return fail(t.Name, err)
		}
	}
	if err := w.Flush(); err != nil {
		return fail("", err)
	}
	if err := tmp.Chmod(0o644); err != nil {
		return fail("", err)
	}
	if err := tmp.Sync(); err != nil {
		return fail("", err)
	}
	if err := tmp.Close(); err != nil {
		return fail("", err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fail("", err)
	}
	return nil
}
