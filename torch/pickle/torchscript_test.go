package pickle

import (
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"
)

// TestLoadTorchScript reads a torch.jit.save archive (testdata/
// gen_torchscript.py) and checks every parameter and buffer against the
// archive's own state_dict() as torch.jit.load gives it.
func TestLoadTorchScript(t *testing.T) {
	want, err := Load(filepath.Join("testdata", "torchscript_state.pth"))
	require.NoError(t, err)
	got, err := LoadTorchScript(filepath.Join("testdata", "torchscript.pt"))
	require.NoError(t, err)
	require.NotEmpty(t, want.Tensors)
	for _, w := range want.Tensors {
		g, ok := got.Get(w.Name)
		require.True(t, ok, "%s missing", w.Name)
		require.Equal(t, w, *g, w.Name)
	}
	for _, g := range got.Tensors {
		if _, ok := want.Get(g.Name); !ok {
			t.Logf("plain tensor attribute (not in state_dict): %s", g.Name)
		}
	}
	// A plain checkpoint is not an archive of modules.
	_, err = LoadTorchScript(filepath.Join("testdata", "torchscript_state.pth"))
	require.ErrorContains(t, err, "not a TorchScript module")
	// Load still refuses the archive's classes.
	_, err = Load(filepath.Join("testdata", "torchscript.pt"))
	var refused *RefusedGlobalError
	require.ErrorAs(t, err, &refused)
}
