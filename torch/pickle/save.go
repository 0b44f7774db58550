package pickle

import (
	"archive/zip"
	"bytes"
	"encoding/binary"
	"fmt"
	"os"
	"strconv"
)

// storageTypes maps a safetensors dtype spelling back to the storage class
// torch.save names for it (the inverse of the reader's table).
var storageTypes = map[string]string{
	"F64": "DoubleStorage", "F32": "FloatStorage", "F16": "HalfStorage", "BF16": "BFloat16Storage",
	"I64": "LongStorage", "I32": "IntStorage", "I16": "ShortStorage", "I8": "CharStorage",
	"U8": "ByteStorage", "BOOL": "BoolStorage",
}

var elemSizes = map[string]int64{
	"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1,
}

// Save writes tensors as a torch.save checkpoint (zip format, pickle
// protocol 2) that torch.load and Load read back: an OrderedDict of
// contiguous tensors, each with its own storage, in the given order. With
// topKey not empty the state dict is nested one level down, as
// {topKey: state_dict} (the layout of checkpoints saved as
// {'params': model.state_dict()}). Tests use it to write checkpoints in a
// published layout from generated weights.
func Save(path, topKey string, tensors []Tensor) error {
	if topKey == "" {
		var pk pickler
		pk.op(0x80, 2) // PROTO 2
		if err := pk.stateDict(0, tensors); err != nil {
			return fmt.Errorf("pickle: save %s: %w", path, err)
		}
		pk.op('.') // STOP
		return writeArchive(path, pk.buf.Bytes(), tensors)
	}
	return SaveSections(path, []Section{{Key: topKey, Tensors: tensors}})
}

// Section is one state dict of a checkpoint that holds several.
type Section struct {
	Key     string
	Tensors []Tensor
}

// SaveSections writes a checkpoint that is a dict of state dicts,
// {key: state_dict, …} in the given order (as A-FINE's afine.pth holds
// one state dict per sub-network).
func SaveSections(path string, sections []Section) error {
	var pk pickler
	pk.op(0x80, 2) // PROTO 2
	pk.op('}')     // EMPTY_DICT
	var all []Tensor
	if len(sections) > 0 {
		pk.op('(') // MARK
	}
	for _, sec := range sections {
		pk.str(sec.Key)
		if err := pk.stateDict(len(all), sec.Tensors); err != nil {
			return fmt.Errorf("pickle: save %s: section %q: %w", path, sec.Key, err)
		}
		all = append(all, sec.Tensors...)
	}
	if len(sections) > 0 {
		pk.op('u') // SETITEMS
	}
	pk.op('.') // STOP
	return writeArchive(path, pk.buf.Bytes(), all)
}

// stateDict writes an OrderedDict of tensors whose storages are archive
// entries data/<first>, data/<first+1>, ….
func (p *pickler) stateDict(first int, tensors []Tensor) error {
	p.orderedDict()
	if len(tensors) == 0 {
		return nil
	}
	p.op('(') // MARK
	for i, t := range tensors {
		p.str(t.Name)
		if err := p.tensor(first+i, t); err != nil {
			return err
		}
	}
	p.op('u') // SETITEMS
	return nil
}

// pickler emits the few protocol-2 opcodes a state dict needs.
type pickler struct{ buf bytes.Buffer }

func (p *pickler) op(b ...byte) { p.buf.Write(b) }

// str writes a BINUNICODE string.
func (p *pickler) str(s string) {
	p.buf.WriteByte('X')
	var n [4]byte
	binary.LittleEndian.PutUint32(n[:], uint32(len(s)))
	p.buf.Write(n[:])
	p.buf.WriteString(s)
}

// int writes BININT for values that fit 32 bits, LONG1 otherwise.
func (p *pickler) int(v int64) {
	if v >= -1<<31 && v < 1<<31 {
		p.buf.WriteByte('J')
		var n [4]byte
		binary.LittleEndian.PutUint32(n[:], uint32(int32(v)))
		p.buf.Write(n[:])
		return
	}
	var n [8]byte
	binary.LittleEndian.PutUint64(n[:], uint64(v))
	p.buf.Write([]byte{0x8a, 8})
	p.buf.Write(n[:])
}

// ints writes a tuple of ints.
func (p *pickler) ints(vs []int64) {
	if len(vs) == 0 {
		p.op(')') // EMPTY_TUPLE
		return
	}
	p.op('(')
	for _, v := range vs {
		p.int(v)
	}
	p.op('t')
}

func (p *pickler) global(module, name string) {
	p.buf.WriteByte('c')
	p.buf.WriteString(module + "\n" + name + "\n")
}

// orderedDict writes collections.OrderedDict().
func (p *pickler) orderedDict() {
	p.global("collections", "OrderedDict")
	p.op(')', 'R')
}

// SaveTensor writes one bare tensor as torch.save(tensor, path) does
// (LoadTensor reads it back).
func SaveTensor(path string, t Tensor) error {
	var pk pickler
	pk.op(0x80, 2)
	if err := pk.tensor(0, t); err != nil {
		return fmt.Errorf("pickle: save %s: %w", path, err)
	}
	pk.op('.')
	return writeArchive(path, pk.buf.Bytes(), []Tensor{t})
}

// tensor writes _rebuild_tensor_v2 of a contiguous tensor whose storage is
// archive entry data/<i>.
func (p *pickler) tensor(i int, t Tensor) error {
	st, ok := storageTypes[t.DType]
	if !ok {
		return fmt.Errorf("tensor %q: unsupported dtype %q", t.Name, t.DType)
	}
	numel := int64(1)
	for _, d := range t.Shape {
		if d < 0 {
			return fmt.Errorf("tensor %q: negative dimension in %v", t.Name, t.Shape)
		}
		numel *= d
	}
	if int64(len(t.Data)) != numel*elemSizes[t.DType] {
		return fmt.Errorf("tensor %q: %d bytes for shape %v of %s", t.Name, len(t.Data), t.Shape, t.DType)
	}
	p.global("torch._utils", "_rebuild_tensor_v2")
	p.op('(') // args
	p.op('(') // persistent id
	p.str("storage")
	p.global("torch", st)
	p.str(strconv.Itoa(i))
	p.str("cpu")
	p.int(numel)
	p.op('t', 'Q') // TUPLE, BINPERSID
	p.int(0)       // storage offset
	p.ints(t.Shape)
	stride := make([]int64, len(t.Shape))
	s := int64(1)
	for d := len(t.Shape) - 1; d >= 0; d-- {
		stride[d] = s
		s *= t.Shape[d]
	}
	p.ints(stride)
	p.op(0x89) // NEWFALSE: requires_grad
	p.orderedDict()
	p.op('t', 'R') // TUPLE, REDUCE
	return nil
}

// writeArchive writes the zip: archive/data.pkl, archive/data/<i> for each
// tensor's storage, archive/version.
func writeArchive(path string, pkl []byte, tensors []Tensor) (err error) {
	f, err := os.Create(path)
	if err != nil {
		return fmt.Errorf("pickle: save: %w", err)
	}
	defer func() {
		if cerr := f.Close(); err == nil && cerr != nil {
			err = fmt.Errorf("pickle: save: %w", cerr)
		}
	}()
	zw := zip.NewWriter(f)
	write := func(name string, b []byte) error {
		w, err := zw.CreateHeader(&zip.FileHeader{Name: "archive/" + name, Method: zip.Store})
		if err != nil {
			return err
		}
		_, err = w.Write(b)
		return err
	}
	if err := write("data.pkl", pkl); err != nil {
		return fmt.Errorf("pickle: save %s: %w", path, err)
	}
	for i, t := range tensors {
		if err := write("data/"+strconv.Itoa(i), t.Data); err != nil {
			return fmt.Errorf("pickle: save %s: %w", path, err)
		}
	}
	if err := write("version", []byte("3\n")); err != nil {
		return fmt.Errorf("pickle: save %s: %w", path, err)
	}
	if err := zw.Close(); err != nil {
		return fmt.Errorf("pickle: save %s: %w", path, err)
	}
	return nil
}
