package imageio

import (
	"image/color"
	"image/png"
	"io/fs"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestSavePNG(t *testing.T) {
	dir := t.TempDir()
	m := lcgImage(1, 13, 9)
	p := filepath.Join(dir, "out.png")
	require.NoError(t, SavePNG(p, m))
	back, err := Load(p)
	require.NoError(t, err)
	require.Equal(t, m, back)
	f, err := os.Open(p)
	require.NoError(t, err)
	cfg, err := png.DecodeConfig(f)
	f.Close()
	require.NoError(t, err)
	require.Equal(t, color.RGBAModel, cfg.ColorModel) // 8-bit truecolour, no alpha needed
	fi, err := os.Stat(p)
	require.NoError(t, err)
	require.Equal(t, fs.FileMode(0o644), fi.Mode().Perm())

	// Overwrite in place; no temporary file stays behind.
	m2 := lcgImage(2, 5, 4)
	require.NoError(t, SavePNG(p, m2))
	back, err = Load(p)
	require.NoError(t, err)
	require.Equal(t, m2, back)
	entries, err := os.ReadDir(dir)
	require.NoError(t, err)
	require.Len(t, entries, 1)

	// Failures leave nothing.
	err = SavePNG(filepath.Join(dir, "nope", "x.png"), m)
	require.ErrorContains(t, err, "imageio: ")
	require.ErrorIs(t, err, fs.ErrNotExist)
	require.Error(t, SavePNG(filepath.Join(dir, "bad.png"), &RGB8{W: 2, H: 2, Pix: make([]uint8, 5)}))
	require.Error(t, SavePNG(filepath.Join(dir, "bad.png"), &RGB8{}))
	// A directory in the way: rename fails, the temporary file is removed.
	require.NoError(t, os.Mkdir(filepath.Join(dir, "taken.png"), 0o755))
	require.Error(t, SavePNG(filepath.Join(dir, "taken.png"), m))
	entries, err = os.ReadDir(dir)
	require.NoError(t, err)
	require.Len(t, entries, 2)
}
