package testutil

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"github.com/dp2osr/dp2o/torch/safetensors"
)

// SparseSuffix marks a row-sparse copy of a safetensors fixture: a file
// whose embedding tables keep only the rows the fixtures index. Such a table
// K is stored as K.rows (n, d) and K.ids (n) int64, with its full shape in
// the header metadata "sparse_rows" ({K: [N, d]}); expanded, the other rows
// are zero. It keeps a tiny model with a full-size vocabulary small in the
// repository while the test still loads a complete checkpoint file.
const SparseSuffix = ".sparse"

// Weights returns the path of a safetensors fixture. When the fixture set
// holds only its row-sparse copy (rel + SparseSuffix), the full file is
// rebuilt in a temporary folder first.
func Weights(tb testing.TB, rel string) string {
	tb.Helper()
	p := fixturePath(rel)
	if _, err := os.Stat(p); err == nil {
		return p
	} else if !errors.Is(err, fs.ErrNotExist) {
		tb.Fatalf("fixture %s: %v", rel, err)
	}
	sparse := Fixture(tb, rel+SparseSuffix)
	out := filepath.Join(tb.TempDir(), filepath.Base(rel))
	if err := expandSparse(sparse, out); err != nil {
		tb.Fatalf("fixture %s: %v", rel, err)
	}
	return out
}

// fixturePath is where the fixture file or folder rel is looked up:
// $DP2O_FIXTURES/rel when that is set; otherwise the package's
// testdata/rel, or, when the package has no copy, testdata/rel at the
// module root, where fixtures that several packages read are kept once.
func fixturePath(rel string) string {
	if root := os.Getenv("DP2O_FIXTURES"); root != "" {
		return filepath.Join(root, rel)
	}
	local := filepath.Join("testdata", rel)
	if _, err := os.Stat(local); err == nil {
		return local
	}
	if mod := ModuleRoot(); mod != "" {
		shared := filepath.Join(mod, "testdata", rel)
		if _, err := os.Stat(shared); err == nil {
			return shared
		}
	}
	return local
}

// ModuleRoot is the nearest folder at or above the working directory (a
// test's package folder) that holds go.mod, or "".
func ModuleRoot() string {
	dir, err := os.Getwd()
	if err != nil {
		return ""
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return ""
		}
		dir = parent
	}
}

// expandSparse writes the full safetensors file of a row-sparse copy.
func expandSparse(src, dst string) error {
	f, err := safetensors.Open(src)
	if err != nil {
		return err
	}
	defer f.Close()
	var full map[string][]int64
	if err := json.Unmarshal([]byte(f.Metadata()["sparse_rows"]), &full); err != nil {
		return fmt.Errorf("%s: metadata sparse_rows: %w", src, err)
	}
	var out []safetensors.Tensor
	for _, name := range f.Names() {
		info, _ := f.Info(name)
		data, err := f.Data(name)
		if err != nil {
			return err
		}
		base := strings.TrimSuffix(strings.TrimSuffix(name, ".rows"), ".ids")
		if _, sparse := full[base]; sparse {
			continue
		}
		out = append(out, safetensors.Tensor{Name: name, DType: info.DType, Shape: info.Shape, Data: data})
	}
	keys := make([]string, 0, len(full))
	for k := range full {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		shape := full[k]
		rowsInfo, ok := f.Info(k + ".rows")
		if !ok || len(shape) != 2 || rowsInfo.DType.Size() == 0 {
			return fmt.Errorf("%s: bad sparse table %q", src, k)
		}
		rows, _ := f.Data(k + ".rows")
		idsRaw, err := f.Data(k + ".ids")
		if err != nil {
			return err
		}
		rowBytes := int(shape[1]) * rowsInfo.DType.Size()
		table := make([]byte, int(shape[0])*rowBytes)
		for i := 0; i < len(idsRaw)/8; i++ {
			id := int64(binary.LittleEndian.Uint64(idsRaw[8*i:]))
			if id < 0 || id >= shape[0] || (i+1)*rowBytes > len(rows) {
				return fmt.Errorf("%s: sparse table %q: row %d (id %d) out of range", src, k, i, id)
			}
			copy(table[int(id)*rowBytes:], rows[i*rowBytes:(i+1)*rowBytes])
		}
		out = append(out, safetensors.Tensor{Name: k, DType: rowsInfo.DType, Shape: shape, Data: table})
	}
	return safetensors.Save(dst, out, map[string]string{"format": "pt"})
}
