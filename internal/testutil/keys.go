package testutil

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"slices"
	"sort"
	"testing"
)

// KeyManifest is a keys.json fixture: the state-dict keys of a full-size
// model with their shapes. The SD2 files list "tensors" in state-dict order
// (Ordered); the FLUX ones list "keys" sorted.
type KeyManifest struct {
	Names     []string
	Shapes    map[string][]int64
	NumParams int64
	Ordered   bool
}

// ReadKeys reads a keys.json and checks its own counts (tensors and
// parameters) against the shapes it lists.
func ReadKeys(tb testing.TB, path string) KeyManifest {
	tb.Helper()
	var doc struct {
		NumTensors int             `json:"num_tensors"`
		NumKeys    int             `json:"num_keys"`
		NumParams  int64           `json:"num_params"`
		Tensors    json.RawMessage `json:"tensors"`
		Keys       json.RawMessage `json:"keys"`
	}
	data, err := os.ReadFile(path)
	if err != nil {
		tb.Fatal(err)
	}
	if err := json.Unmarshal(data, &doc); err != nil {
		tb.Fatalf("%s: %v", path, err)
	}
	m := KeyManifest{NumParams: doc.NumParams, Ordered: doc.Tensors != nil}
	if !m.Ordered {
		doc.Tensors, doc.NumTensors = doc.Keys, doc.NumKeys
	}
	if err := json.Unmarshal(doc.Tensors, &m.Shapes); err != nil {
		tb.Fatalf("%s: %v", path, err)
	}
	// The key order, which a Go map loses.
	dec := json.NewDecoder(bytes.NewReader(doc.Tensors))
	if _, err := dec.Token(); err != nil { // {
		tb.Fatalf("%s: %v", path, err)
	}
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			tb.Fatalf("%s: %v", path, err)
		}
		m.Names = append(m.Names, tok.(string))
		var skip json.RawMessage
		if err := dec.Decode(&skip); err != nil {
			tb.Fatalf("%s: %v", path, err)
		}
	}
	if len(m.Names) != doc.NumTensors {
		tb.Fatalf("%s: %d keys listed, num_tensors says %d", path, len(m.Names), doc.NumTensors)
	}
	var n int64
	for _, s := range m.Shapes {
		p := int64(1)
		for _, d := range s {
			p *= d
		}
		n += p
	}
	if n != doc.NumParams {
		tb.Fatalf("%s: shapes hold %d parameters, num_params says %d", path, n, doc.NumParams)
	}
	return m
}

// AssertKeys checks that a model asked for exactly the manifest's keys with
// their shapes: names are the keys in the order the model requested them
// (state-dict order, compared when the manifest is ordered), requested maps
// each key to its requested shape (nn.Builder.Requested).
func AssertKeys(tb testing.TB, want KeyManifest, names []string, requested map[string][]int64) {
	tb.Helper()
	for k, sh := range want.Shapes {
		g, ok := requested[k]
		if !ok {
			tb.Fatalf("missing key %s", k)
		}
		if !slices.Equal(sh, g) {
			tb.Fatalf("shape of %s: model %v, checkpoint %v", k, g, sh)
		}
	}
	for k := range requested {
		if _, ok := want.Shapes[k]; !ok {
			tb.Fatalf("extra key %s", k)
		}
	}
	got := names
	exp := want.Names
	if !want.Ordered {
		got, exp = slices.Clone(got), slices.Clone(exp)
		sort.Strings(got)
		sort.Strings(exp)
	}
	if !slices.Equal(got, exp) {
		i := 0
		for i < len(got) && i < len(exp) && got[i] == exp[i] {
			i++
		}
		tb.Fatalf("key order differs from state-dict order at position %d: %s", i, describeAt(got, exp, i))
	}
}

func describeAt(got, want []string, i int) string {
	g, w := "(end)", "(end)"
	if i < len(got) {
		g = got[i]
	}
	if i < len(want) {
		w = want[i]
	}
	return fmt.Sprintf("model %q, checkpoint %q", g, w)
}
