package sample

import (
	"context"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/stretchr/testify/require"
)

// TestFullDisk runs out of space (a file-size limit: writes past it fail
// as on a full disk) in the middle of writing candidates: the run stops
// with the error, no candidate file is left half-written, nothing is
// recorded that is not there, and once there is room a rerun completes the
// set with the same bytes as an uninterrupted run.
func TestFullDisk(t *testing.T) {
	ref, ins, cfg := reference(t)
	dir := t.TempDir()
	require.NoError(t, prepareDir(dir, cfg))

	var old syscall.Rlimit
	require.NoError(t, syscall.Getrlimit(syscall.RLIMIT_FSIZE, &old))
	signal.Ignore(syscall.SIGXFSZ)
	defer signal.Reset(syscall.SIGXFSZ)
	// Smaller than one candidate PNG, larger than the manifest lines.
	smallest := int64(1 << 62)
	for _, s := range fileSizes(t, ref) {
		smallest = min(smallest, s)
	}
	limit := syscall.Rlimit{Cur: uint64(smallest / 2), Max: old.Max}
	require.NoError(t, syscall.Setrlimit(syscall.RLIMIT_FSIZE, &limit))
	_, err := Run(context.Background(), sd2Job(t, dir, ins, cfg))
	require.NoError(t, syscall.Setrlimit(syscall.RLIMIT_FSIZE, &old))
	require.Error(t, err)
	require.ErrorContains(t, err, "writing")
	t.Logf("error: %v", err)

	files, err := filepath.Glob(filepath.Join(dir, CandidateDir, "*", "*"))
	require.NoError(t, err)
	require.Empty(t, files, "a candidate (or a temporary file) was left behind")
	hidden, err := filepath.Glob(filepath.Join(dir, CandidateDir, "*", ".*"))
	require.NoError(t, err)
	require.Empty(t, hidden)
	recs, err := ReadRecords(filepath.Join(dir, ShardManifest(0, 1)))
	require.NoError(t, err)
	require.Empty(t, recs)

	_, err = Run(context.Background(), sd2Job(t, dir, ins, cfg))
	require.NoError(t, err)
	_, err = Merge(dir, ins)
	require.NoError(t, err)
	require.Equal(t, fileSums(t, ref), fileSums(t, dir))
}

func fileSizes(t *testing.T, dir string) []int64 {
	var out []int64
	require.NoError(t, filepath.Walk(filepath.Join(dir, CandidateDir), func(p string, info os.FileInfo, err error) error {
		if err == nil && !info.IsDir() {
			out = append(out, info.Size())
		}
		return err
	}))
	return out
}
