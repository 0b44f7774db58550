//go:build !unix

package hub

import (
	"context"
	"os"
	"path/filepath"
)

// lockFile creates the lock file huggingface_hub uses; without flock the
// lock itself is not taken on this platform.
func lockFile(ctx context.Context, path string) (func(), error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, err
	}
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, err
	}
	return func() { f.Close() }, ctx.Err()
}
