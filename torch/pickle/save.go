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
func Save(path, topKey string, tensors []Tensor) (err error) {
	var pk pickler
	pk.op(0x80, 2) // PROTO 2
	if topKey != "" {
		pk.op('}') // EMPTY_DICT
		pk.str(topKey)
	}
	pk.orderedDict()
	if len(tensors) > 0 {
		pk.op('(') // MARK
	}
	for i, t := range tensors {
		st, ok := storageTypes[t.DType]
		if !ok {
			return fmt.Errorf("pickle: save %s: tensor %q: unsupported dtype %q", path, t.Name, t.DType)
		}
		numel := int64(1)
		for _, d := range t.Shape {
			if d < 0 {
				return fmt.Errorf("pickle: save %s: tensor %q: negative dimension in %v", path, t.Name, t.Shape)
			}
			numel *= d
		}
		if int64(len(t.Data)) != numel*elemSizes[t.DType] {
			return fmt.Errorf("pickle: save %s: tensor %q: %d bytes for shape %v of %s", path, t.Name, len(t.Data), t.Shape, t.DType)
		}
		pk.str(t.Name)
		pk.global("torch._utils", "_rebuild_tensor_v2")
		pk.op('(') // args
		pk.op('(') // persistent id
		pk.str("storage")
		pk.global("torch", st)
		pk.str(strconv.Itoa(i))
		pk.str("cpu")
		pk.int(numel)
		pk.op('t', 'Q') // TUPLE, BINPERSID
		pk.int(0)       // storage offset
		pk.ints(t.Shape)
		stride := make([]int64, len(t.Shape))
		s := int64(1)
		for d := len(t.Shape) - 1; d >= 0; d-- {
			stride[d] = s
			s *= t.Shape[d]
		}
		pk.ints(stride)
		pk.op(0x89) // NEWFALSE: requires_grad
		pk.orderedDict()
		pk.op('t', 'R') // TUPLE, REDUCE
	}
	if len(tensors) > 0 {
		pk.op('u') // SETITEMS
	}
	if topKey != "" {
		pk.op('s') // SETITEM
	}
	pk.op('.') // STOP

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
	if err := write("data.pkl", pk.buf.Bytes()); err != nil {
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
