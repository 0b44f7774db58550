package vae

import (
	"encoding/json"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/dp2osr/dp2o/internal/testutil"
	"github.com/dp2osr/dp2o/torch"
	"github.com/dp2osr/dp2o/torch/nn"
)

// TestFullSizeKeys builds the full-size models on the meta device and checks
// that they request exactly the checkpoint's keys, shapes and order.
func TestFullSizeKeys(t *testing.T) {
	for _, dir := range []string{"sd2/keys/vae", "flux/keys/flux_vae"} {
		t.Run(dir, func(t *testing.T) {
			testutil.NoLeak(t)
			root := testutil.Fixture(t, dir)
			cfg, err := LoadConfig(filepath.Join(root, "config.json"))
			require.NoError(t, err)
			want := testutil.ReadKeys(t, filepath.Join(root, "keys.json"))
			b := nn.NewBuilder(nil, torch.Float32, torch.Meta)
			_, err = New(b, cfg)
			require.NoError(t, err)
			p, err := b.Finish()
			require.NoError(t, err)
			defer p.Close()
			testutil.AssertKeys(t, want, p.Names, b.Requested())
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
	keys := testutil.ReadKeys(t, filepath.Join(root, "keys.json"))
	names, shapes := keys.Names, keys.Shapes

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
