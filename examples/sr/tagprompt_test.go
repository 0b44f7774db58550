package main

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/dp2osr/dp2o/internal/testutil"
)

// TestSRTaggerFlags: without --prompt, --ram_path loads the tagger before
// any image is processed; a bad checkpoint is a clear error and no output
// is written. With --prompt the tagger is not loaded at all.
func TestSRTaggerFlags(t *testing.T) {
	testutil.NoLeak(t)
	out := t.TempDir()
	bad := filepath.Join(t.TempDir(), "ram.pth")
	require.NoError(t, os.WriteFile(bad, []byte("not a checkpoint"), 0o644))
	err := sr(t, "--image_path", sampleDir, "--output_dir", out, "--ram_path", bad, "--dape_path", bad)
	require.ErrorContains(t, err, "tagger: ram checkpoint")
	require.Empty(t, listDir(t, out))

	require.NoError(t, sr(t, "--image_path", sampleDir, "--output_dir", out, "--prompt", "house", "--ram_path", bad))
	require.Equal(t, []string{"lr_house.png"}, listDir(t, out))
}
