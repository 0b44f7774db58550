//go:build !(linux || darwin || freebsd || netbsd || openbsd || dragonfly)

package safetensors

import (
	"io"
	"os"
)

// mapFile reads the file into memory on platforms without mmap support.
func mapFile(f *os.File, size int64) ([]byte, func([]byte) error, error) {
	buf := make([]byte, size)
	if _, err := io.ReadFull(io.NewSectionReader(f, 0, size), buf); err != nil {
		return nil, nil, err
	}
	return buf, func([]byte) error { return nil }, nil
}
