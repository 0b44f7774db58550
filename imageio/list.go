package imageio

import (
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
)

// Extensions are the file patterns of the official scripts' input glob
// ('*.png', '*.jpg', '*.jpeg', '*.bmp', '*.tiff', '*.webp'), each also taken
// in upper case. Matching is exact in case: "a.PNG" and "a.png" match,
// "a.Png" does not, and ".tif" is not accepted, as in the Python code
// (pathlib's glob on POSIX).
var Extensions = []string{".png", ".jpg", ".jpeg", ".bmp", ".tiff", ".webp"}

// IsImageFile reports whether the official scripts' glob would pick a file
// of this name: its base name ends in one of [Extensions], all lower or all
// upper case.
func IsImageFile(name string) bool {
	base := filepath.Base(name)
	for _, ext := range Extensions {
		if strings.HasSuffix(base, ext) || strings.HasSuffix(base, strings.ToUpper(ext)) {
			return true
		}
	}
	return false
}

// ListImages returns the images the official scripts would process for
// --image_path pathOrDir. For a folder: the entries whose names pass
// [IsImageFile] (hidden files included, as pathlib's glob does; folders
// excluded, where the script would crash), sorted by name in byte order
// (Python's sorted() of the paths), each joined to pathOrDir. An existing
// folder without images gives an empty list. For a file: the file itself,
// whatever its name (the official script accepts folders only).
func ListImages(pathOrDir string) ([]string, error) {
	fi, err := os.Stat(pathOrDir)
	if err != nil {
		return nil, fmt.Errorf("imageio: %s: %w", pathOrDir, unwrapPathError(err))
	}
	if !fi.IsDir() {
		if !fi.Mode().IsRegular() {
			return nil, fmt.Errorf("imageio: %s: not a regular file or folder", pathOrDir)
		}
		return []string{pathOrDir}, nil
	}
	entries, err := os.ReadDir(pathOrDir)
	if err != nil {
		return nil, fmt.Errorf("imageio: %s: %w", pathOrDir, unwrapPathError(err))
	}
	var names []string
	for _, e := range entries {
		if !IsImageFile(e.Name()) {
			continue
		}
		full := filepath.Join(pathOrDir, e.Name())
		st, err := os.Stat(full) // follows symlinks, like Image.open
		if err != nil || st.IsDir() {
			continue
		}
		names = append(names, e.Name())
	}
	sort.Strings(names)
	out := make([]string, len(names))
	for i, n := range names {
		out[i] = filepath.Join(pathOrDir, n)
	}
	return out, nil
}

// OutputName is the official output file name for an input path:
// os.path.basename(path).split('.')[0] + ".png" — the base name up to its
// first dot, so "a.b.jpg" gives "a.png" and ".x.png" gives ".png".
func OutputName(inputPath string) string {
	base := filepath.Base(inputPath)
	if i := strings.IndexByte(base, '.'); i >= 0 {
		base = base[:i]
	}
	return base + ".png"
}
