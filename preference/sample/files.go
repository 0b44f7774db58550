package sample

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"image/png"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/dp2osr/dp2o/imageio"
)

// encodePNG encodes img as PNG (Go's encoder, default compression: the
// same pixels always give the same bytes) and returns the bytes and their
// SHA-256 in hex.
func encodePNG(img *imageio.RGB8) ([]byte, string, error) {
	var buf bytes.Buffer
	enc := png.Encoder{CompressionLevel: png.DefaultCompression}
	if err := enc.Encode(&buf, img.ToImage()); err != nil {
		return nil, "", err
	}
	h := sha256.Sum256(buf.Bytes())
	return buf.Bytes(), hex.EncodeToString(h[:]), nil
}

// FileSHA256 is the SHA-256 of a file's bytes, in hex.
func FileSHA256(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", fmt.Errorf("%s: %w", path, err)
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// tmpMark is in the name of every temporary file this package writes.
const tmpMark = ".tmp-"

// writeAtomic writes data to path through a synced temporary file in the
// same folder that is renamed over path: path holds the old file or the
// whole new one, never a part. The file gets mode 0644.
func writeAtomic(path string, data []byte) (err error) {
	dir, base := filepath.Split(path)
	if dir == "" {
		dir = "."
	}
	f, err := os.CreateTemp(dir, "."+base+tmpMark+"*")
	if err != nil {
		return fmt.Errorf("sample: %w", err)
	}
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(f.Name())
			err = fmt.Errorf("sample: writing %s: %w", path, err)
		}
	}()
	if _, err = f.Write(data); err != nil {
		return err
	}
	if err = f.Chmod(0o644); err != nil {
		return err
	}
	if err = f.Sync(); err != nil {
		return err
	}
	if err = f.Close(); err != nil {
		return err
	}
	return os.Rename(f.Name(), path)
}

// removeTemps deletes what a killed writer left in dir: files whose name
// starts with "." and holds tmpMark.
func removeTemps(dir string) error {
	ents, err := os.ReadDir(dir)
	if err != nil {
		if os.IsNotExist(err) {
			return nil
		}
		return fmt.Errorf("sample: %w", err)
	}
	for _, e := range ents {
		if n := e.Name(); !e.IsDir() && strings.HasPrefix(n, ".") && strings.Contains(n, tmpMark) {
			if err := os.Remove(filepath.Join(dir, n)); err != nil {
				return fmt.Errorf("sample: removing a stale temporary file: %w", err)
			}
		}
	}
	return nil
}
