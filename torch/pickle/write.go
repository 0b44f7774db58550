package pickle

import (
	"archive/zip"
	"bufio"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
)

// Storage is one storage of a checkpoint written by [Write]: Numel elements
// of DType (safetensors spelling) whose bytes Data returns when the file is
// written, so that a large checkpoint is never held in memory at once.
type Storage struct {
	DType string
	Numel int64
	Data  func() ([]byte, error)
}

// View is a tensor of a checkpoint written by [Write]: a strided view of
// storage number Storage (nil Stride: contiguous row-major). Several views
// may share a storage, as tied weights do in a torch.save checkpoint.
type View struct {
	Name    string
	Storage int
	Offset  int64
	Shape   []int64
	Stride  []int64
}

// Write is [Save] for views over shared storages: a torch.save checkpoint
// (zip format, pickle protocol 2) holding an OrderedDict of the views, in
// the given order, nested as {topKey: state_dict, **extra} when topKey is
// not empty (extra: other top-level integer entries, such as "epoch"). The
// storages' bytes are fetched one at a time and streamed to the file,
// which is written under a temporary name and renamed into place.
func Write(path, topKey string, extra map[string]int64, storages []Storage, views []View) error {
	if err := write(path, topKey, extra, storages, views); err != nil {
		return fmt.Errorf("pickle: write %s: %w", path, err)
	}
	return nil
}

func write(path, topKey string, extra map[string]int64, storages []Storage, views []View) (err error) {
	for i, st := range storages {
		if _, ok := storageTypes[st.DType]; !ok {
			return fmt.Errorf("storage %d: unsupported dtype %q", i, st.DType)
		}
		if st.Numel < 0 || (st.Numel > 0 && st.Data == nil) {
			return fmt.Errorf("storage %d: %d elements without data", i, st.Numel)
		}
	}
	var pk pickler
	pk.op(0x80, 2) // PROTO 2
	if topKey != "" {
		pk.op('}', '(') // EMPTY_DICT, MARK
		keys := make([]string, 0, len(extra))
		for k := range extra {
			if k == topKey {
				return fmt.Errorf("extra entry %q is the state dict's key", k)
			}
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			pk.str(k)
			pk.int(extra[k])
		}
		pk.str(topKey)
	}
	pk.orderedDict()
	if len(views) > 0 {
		pk.op('(')
	}
	for _, v := range views {
		if v.Storage < 0 || v.Storage >= len(storages) {
			return fmt.Errorf("tensor %q: no storage %d", v.Name, v.Storage)
		}
		st := storages[v.Storage]
		stride, err := viewStride(v, st.Numel)
		if err != nil {
			return fmt.Errorf("tensor %q: %w", v.Name, err)
		}
		pk.str(v.Name)
		pk.global("torch._utils", "_rebuild_tensor_v2")
		pk.op('(', '(') // args, persistent id
		pk.str("storage")
		pk.global("torch", storageTypes[st.DType])
		pk.str(strconv.Itoa(v.Storage))
		pk.str("cpu")
		pk.int(st.Numel)
		pk.op('t', 'Q') // TUPLE, BINPERSID
		pk.int(v.Offset)
		pk.ints(v.Shape)
		pk.ints(stride)
		pk.op(0x89) // NEWFALSE: requires_grad
		pk.orderedDict()
		pk.op('t', 'R')
	}
	if len(views) > 0 {
		pk.op('u') // SETITEMS
	}
	if topKey != "" {
		pk.op('u')
	}
	pk.op('.')

	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()
	bw := bufio.NewWriterSize(tmp, 1<<20)
	zw := zip.NewWriter(bw)
	put := func(name string, b []byte) error {
		w, err := zw.CreateHeader(&zip.FileHeader{Name: "archive/" + name, Method: zip.Store})
		if err != nil {
			return err
		}
		_, err = w.Write(b)
		return err
	}
	if err := put("data.pkl", pk.buf.Bytes()); err != nil {
		return err
	}
	for i, st := range storages {
		var b []byte
		if st.Numel > 0 {
			if b, err = st.Data(); err != nil {
				return fmt.Errorf("storage %d: %w", i, err)
			}
		}
		if want := st.Numel * elemSizes[st.DType]; int64(len(b)) != want {
			return fmt.Errorf("storage %d: %d bytes, want %d", i, len(b), want)
		}
		if err := put("data/"+strconv.Itoa(i), b); err != nil {
			return err
		}
	}
	if err := put("version", []byte("3\n")); err != nil {
		return err
	}
	if err := zw.Close(); err != nil {
		return err
	}
	if err := bw.Flush(); err != nil {
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}

// viewStride checks that a view fits its storage and returns its strides.
func viewStride(v View, numel int64) ([]int64, error) {
	stride := v.Stride
	if stride == nil {
		stride = make([]int64, len(v.Shape))
		s := int64(1)
		for d := len(v.Shape) - 1; d >= 0; d-- {
			stride[d] = s
			s *= max(v.Shape[d], 1)
		}
	}
	if len(stride) != len(v.Shape) {
		return nil, fmt.Errorf("%d strides for %d dims", len(stride), len(v.Shape))
	}
	if v.Offset < 0 {
		return nil, errors.New("negative storage offset")
	}
	last, n := v.Offset, int64(1)
	for d, size := range v.Shape {
		if size < 0 || stride[d] < 0 {
			return nil, fmt.Errorf("invalid shape %v / stride %v", v.Shape, stride)
		}
		n *= size
		if size > 0 {
			last += (size - 1) * stride[d]
		}
	}
	if n > 0 && last >= numel {
		return nil, fmt.Errorf("view (offset %d, shape %v, stride %v) exceeds its storage of %d elements", v.Offset, v.Shape, stride, numel)
	}
	return stride, nil
}
