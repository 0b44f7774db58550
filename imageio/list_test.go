package imageio

import (
	"io/fs"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestIsImageFile(t *testing.T) {
	for _, n := range []string{"a.png", "a.PNG", "b.jpg", "b.JPG", "c.jpeg", "c.JPEG", "d.bmp", "d.BMP",
		"e.tiff", "e.TIFF", "f.webp", "f.WEBP", ".png", "dir/x.y.png", ".hidden.jpg"} {
		require.True(t, IsImageFile(n), n)
	}
	for _, n := range []string{"a.Png", "a.JPg", "a.tif", "a.TIF", "a.gif", "a.png.txt", "png", "a_png"} {
		require.False(t, IsImageFile(n), n)
	}
}

func TestListImages(t *testing.T) {
	dir := t.TempDir()
	for _, n := range []string{"b.png", "a.JPG", "C.jpeg", "_x.webp", ".hidden.bmp", "z.tiff",
		"skip.tif", "skip.Png", "skip.gif", "notes.txt", "10.png", "9.png"} {
		require.NoError(t, os.WriteFile(filepath.Join(dir, n), []byte("x"), 0o644))
	}
	require.NoError(t, os.Mkdir(filepath.Join(dir, "folder.png"), 0o755))
	require.NoError(t, os.Symlink(filepath.Join(dir, "b.png"), filepath.Join(dir, "link.png")))
	got, err := ListImages(dir)
	require.NoError(t, err)
	var names []string
	for _, p := range got {
		require.Equal(t, dir, filepath.Dir(p))
		names = append(names, filepath.Base(p))
	}
	// Python: sorted(Path) — code-point order, upper case before lower.
	require.Equal(t, []string{".hidden.bmp", "10.png", "9.png", "C.jpeg", "_x.webp", "a.JPG", "b.png", "link.png", "z.tiff"}, names)

	one := filepath.Join(dir, "notes.txt")
	got, err = ListImages(one)
	require.NoError(t, err)
	require.Equal(t, []string{one}, got)

	emptyDir := t.TempDir()
	got, err = ListImages(emptyDir)
	require.NoError(t, err)
	require.Empty(t, got)

	_, err = ListImages(filepath.Join(dir, "missing"))
	require.ErrorIs(t, err, fs.ErrNotExist)
}

func TestOutputName(t *testing.T) {
	for in, want := range map[string]string{
		"photos/0003.png":     "0003.png",
		"a/b/img.v2.jpg":      "img.png",
		"x.JPEG":              "x.png",
		"dir/.hidden.png":     ".png",
		"noext":               "noext.png",
		"/abs/path/pic.webp":  "pic.png",
		"weird name.tiff":     "weird name.png",
		"multi.dots.tar.webp": "multi.png",
	} {
		require.Equal(t, want, OutputName(in), in)
	}
}
