package vae

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/dp2osr/dp2o/internal/testutil"
	"github.com/dp2osr/dp2o/torch"
	"github.com/dp2osr/dp2o/torch/nn"
)

// orderedKeys reads a keys.json: the SD2 files list "tensors" in
// state-dict order (ordered is true), the FLUX ones list "keys" sorted.
func orderedKeys(t *testing.T, path string) (names []string, shapes map[string][]int64, ordered bool) {
	t.Helper()
	var doc struct {
		NumTensors int             `json:"num_tensors"`
		NumKeys    int             `json:"num_keys"`
		NumParams  int64           `json:"num_params"`
		Tensors    json.RawMessage `json:"tensors"`
		Keys       json.RawMessage `json:"keys"`
	}
	data, err := os.ReadFile(path)
	require.NoError(t, err)
	require.NoError(t, json.Unmarshal(data, &doc))
	ordered = doc.Tensors != nil
	if !ordered {
		doc.Tensors, doc.NumTensors = doc.Keys, doc.NumKeys
	}
	require.NoError(t, json.Unmarshal(doc.Tensors, &shapes))
	dec := json.NewDecoder(bytes.NewReader(doc.Tensors))
	_, err = dec.Token() // {
	require.NoError(t, err)
	for dec.More() {
		tok, err := dec.Token()
		require.NoError(t, err)
		names = append(names, tok.(string))
		var skip []int64
		require.NoError(t, dec.Decode(&skip))
	}
	require.Len(t, names, doc.NumTensors)
	var n int64
	for _, s := range shapes {
		p := int64(1)
		for _, d := range s {
			p *= d
		}
		n += p
	}
	require.Equal(t, doc.NumParams, n)
	return names, shapes, ordered
}

// TestFullSizeKeys builds the full-size models on the meta device and checks
// that they request exactly the checkpoint's keys, shapes and order.
func TestFullSizeKeys(t *testing.T) {
	for _, dir := range []string{"sd2/keys/vae", "flux/keys/flux_vae"} {
		t.Run(dir, func(t *testing.T) {
			testutil.NoLeak(t)
			root := testutil.Fixture(t, dir)
			cfg, err := LoadConfig(filepath.Join(root, "config.json"))
			require.NoError(t, err)
			names, shapes, ordered := orderedKeys(t, filepath.Join(root, "keys.json"))
			b := nn.NewBuilder(nil, torch.Float32, torch.Meta)
			_, err = New(b, cfg)
			require.NoError(t, err)
			p, err := b.Finish()
			require.NoError(t, err)
			defer p.Close()
			if ordered {
				require.Equal(t, names, p.Names, "requested keys in state-dict order")
			} else {
				require.ElementsMatch(t, names, p.Names)
			}
			for k, s := range b.Requested() {
				require.Equal(t, fmt.Sprint(shapes[k]), fmt.Sprint(s), k)
			}
		})
	}
}

// TestDeprecatedAttentionKeyMap checks LegacyAttentionKeys against the
// fixture's table of old → current names on a meta-device state dict.
func TestDeprecatedAttentionKeyMap(t *testing.T) {
	testutil.NoLeak(t)
	root := testutil.Fixture(t, "sd2/keys/vae")
	var table map[string]struct {
		Current string  `json:"current_key"`
		Shape   []int64 `json:"shape"`
	}
	data, err := os.ReadFile(filepath.Join(root, "deprecated_attention_keys.json"))
	require.NoError(t, err)
	require.NoError(t, json.Unmarshal(data, &table))
	names, shapes, _ := orderedKeys(t, filepath.Join(root, "keys.json"))

	// A meta state dict with the old names.
	old := nn.MapSource{}
	defer old.Close()
	renamed := map[string]string{}
	for o, e := range table {
		renamed[e.Current] = o
	}
	for _, k := range names {
		name := k
		if o, ok := renamed[k]; ok {
			name = o
			require.Equal(t, shapes[k], table[o].Shape)
		}
		old[name] = torch.Unscope(torch.Empty(shapes[k], torch.Float32, torch.Meta))
	}
	src := LegacyAttentionKeys(old)
	for o, e := range table {
		_, _, ok := src.Meta(o)
		require.False(t, ok, "old name %s still visible", o)
		s, _, ok := src.Meta(e.Current)
		require.True(t, ok, e.Current)
		require.Equal(t, e.Shape, s)
	}
	got := src.Names()
	require.ElementsMatch(t, names, got)

	cfg, err := LoadConfig(filepath.Join(root, "config.json"))
	require.NoError(t, err)
	m, err := FromSource(src, cfg, torch.Float32, torch.Meta)
	require.NoError(t, err)
	m.Close()
}
