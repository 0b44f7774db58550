package imageio

import (
	"fmt"
	"image/png"
	"os"
	"path/filepath"
)

// SavePNG writes img as an 8-bit RGB PNG file at path, atomically: the data
// goes to a temporary file in the same folder, which is synced and then
// renamed over path, so that path never holds a half-written image. The
// folder must exist. The file gets mode 0644.
func SavePNG(path string, img *RGB8) (err error) {
	if img == nil || img.W <= 0 || img.H <= 0 || len(img.Pix) != 3*img.W*img.H {
		return fmt.Errorf("imageio: %s: save: invalid image", path)
	}
	dir, base := filepath.Split(path)
	if dir == "" {
		dir = "."
	}
	f, err := os.CreateTemp(dir, "."+base+".tmp-*")
	if err != nil {
		return fmt.Errorf("imageio: %s: save: %w", path, unwrapPathError(err))
	}
	tmp := f.Name()
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(tmp)
		}
	}()
	enc := png.Encoder{CompressionLevel: png.DefaultCompression}
	if err = enc.Encode(f, img.ToImage()); err != nil {
		return fmt.Errorf("imageio: %s: save: encode: %w", path, err)
	}
	if err = f.Chmod(0o644); err != nil {
		return fmt.Errorf("imageio: %s: save: %w", path, unwrapPathError(err))
	}
	if err = f.Sync(); err != nil {
		return fmt.Errorf("imageio: %s: save: %w", path, unwrapPathError(err))
	}
	if err = f.Close(); err != nil {
		return fmt.Errorf("imageio: %s: save: %w", path, unwrapPathError(err))
	}
	if err = os.Rename(tmp, path); err != nil {
		return fmt.Errorf("imageio: %s: save: %w", path, err)
	}
	return nil
}
