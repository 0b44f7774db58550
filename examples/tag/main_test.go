package main

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"
)

// The model itself is tested in package tagger (full size, from the
// published checkpoint layouts); here the CLI's failure paths.
func TestTagBadInput(t *testing.T) {
	dir := t.TempDir()
	bad := filepath.Join(dir, "ram.pth")
	require.NoError(t, os.WriteFile(bad, []byte("not a checkpoint"), 0o644))
	sample := filepath.Join("..", "..", "assets", "sample")
	for name, tc := range map[string]struct {
		args []string
		want string
	}{
		"no image flag":  {nil, "image_path"},
		"empty folder":   {[]string{"--image_path", dir + "/none", "--ram_path", bad}, "none"},
		"bad checkpoint": {[]string{"--image_path", sample, "--ram_path", bad, "--dape_path", ""}, "ram checkpoint"},
		"missing file":   {[]string{"--image_path", sample, "--ram_path", filepath.Join(dir, "nope.pth")}, "nope.pth"},
		"bad device":     {[]string{"--image_path", sample, "--ram_path", bad, "--device", "tpu"}, "--device"},
		"bad tag list":   {[]string{"--image_path", sample, "--ram_path", bad, "--tag_list", filepath.Join(dir, "tags.txt")}, "tags.txt"},
		"bad thresholds": {[]string{"--image_path", sample, "--ram_path", bad, "--thresholds", filepath.Join(dir, "thr.txt")}, "thr.txt"},
	} {
		t.Run(name, func(t *testing.T) {
			var out bytes.Buffer
			err := newApp(&out).Run(append([]string{"tag", "--device", "cpu"}, tc.args...))
			require.ErrorContains(t, err, tc.want)
		})
	}
}
