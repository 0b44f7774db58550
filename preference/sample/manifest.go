package sample

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"syscall"
)

// Record is one line of a manifest: one candidate (or, with Skipped set
// and Index −1, an input that could not be read).
type Record struct {
	Input    string   `json:"input"`        // the input's id
	LR       string   `json:"lr"`           // its LR file
	HR       string   `json:"hr,omitempty"` // its HR file
	Index    int      `json:"index"`        // candidate index k in the noise pool
	Seed     uint64   `json:"seed"`         // the noise pool's seed k
	Model    string   `json:"model"`        // "sd2" or "flux"
	Prompt   string   `json:"prompt"`       // the prompt it was sampled with
	Settings Settings `json:"settings"`     // the pipeline settings
	Config   string   `json:"config"`       // Config.ID of the set
	File     string   `json:"file"`         // the PNG, relative to the candidate folder
	SHA256   string   `json:"sha256"`       // of the PNG file's bytes
	Skipped  string   `json:"skipped,omitempty"`
}

// key identifies a candidate within a set.
type key struct {
	input string
	index int
}

// CandidateDir is the folder (inside a candidate folder) of the images:
// candidates/<input>/<input>_<k>.png.
const CandidateDir = "candidates"

// CandidateFile is the path of candidate k of input id, relative to the
// candidate folder.
func CandidateFile(id string, k int) string {
	return filepath.Join(CandidateDir, id, fmt.Sprintf("%s_%03d.png", id, k))
}

// ShardFile is the JSON-lines file of shard i of n whose unsharded name is
// base + ".jsonl" (a shard's manifest, a shard's score log).
func ShardFile(base string, i, n int) string { return fmt.Sprintf("%s.%d-of-%d.jsonl", base, i, n) }

// ShardFiles lists dir's ShardFile files of base, sorted by name.
func ShardFiles(dir, base string) ([]string, error) {
	m, err := filepath.Glob(filepath.Join(dir, base+".*-of-*.jsonl"))
	if err != nil {
		return nil, err
	}
	sort.Strings(m)
	return m, nil
}

// ShardManifest is the manifest file of shard i of n.
func ShardManifest(i, n int) string { return ShardFile("manifest", i, n) }

// ManifestFile is the merged manifest (written by Merge).
const ManifestFile = "manifest.jsonl"

// ReadRecords reads a JSON-lines manifest. A last line without its newline
// is what a killed writer left: it is ignored (and cut by the next append).
func ReadRecords(path string) ([]Record, error) {
	var recs []Record
	err := ReadJSONL(path, func(_ int, b []byte) error {
		var r Record
		if err := json.Unmarshal(b, &r); err != nil {
			return err
		}
		recs = append(recs, r)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("sample: %w", err)
	}
	return recs, nil
}

// ReadManifest reads the merged manifest of a candidate folder.
func ReadManifest(dir string) ([]Record, error) {
	return ReadRecords(filepath.Join(dir, ManifestFile))
}

// shardManifests lists dir's shard manifest files, sorted.
func shardManifests(dir string) ([]string, error) { return ShardFiles(dir, "manifest") }

// JSONL appends records to a JSON-lines file (a manifest, a score log),
// holding an exclusive lock on it so that two processes never write one
// file. Each Append is one write followed by a sync, so a killed process
// leaves at most a partial last line, which OpenJSONL cuts and ReadRecords
// ignores.
type JSONL struct {
	f *os.File
}

// OpenJSONL opens (creating) path for appending, locks it and cuts a
// partial last line.
func OpenJSONL(path string) (*JSONL, error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, fmt.Errorf("sample: %w", err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		return nil, fmt.Errorf("sample: %s is in use by another process (the same shard or job running twice?): %w", path, err)
	}
	// Cut a partial last line (a killed writer's).
	b, err := io.ReadAll(f)
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("sample: %w", err)
	}
	end := int64(bytes.LastIndexByte(b, '\n') + 1)
	if end != int64(len(b)) {
		if err := f.Truncate(end); err != nil {
			f.Close()
			return nil, fmt.Errorf("sample: %w", err)
		}
	}
	if _, err := f.Seek(end, io.SeekStart); err != nil {
		f.Close()
		return nil, fmt.Errorf("sample: %w", err)
	}
	return &JSONL{f: f}, nil
}

// Append writes records, one JSON line each, as one write and syncs.
func (w *JSONL) Append(recs ...any) error {
	var buf bytes.Buffer
	for _, r := range recs {
		b, err := json.Marshal(r)
		if err != nil {
			return fmt.Errorf("sample: %w", err)
		}
		buf.Write(b)
		buf.WriteByte('\n')
	}
	if _, err := w.f.Write(buf.Bytes()); err != nil {
		return fmt.Errorf("sample: writing %s: %w", w.f.Name(), err)
	}
	if err := w.f.Sync(); err != nil {
		return fmt.Errorf("sample: writing %s: %w", w.f.Name(), err)
	}
	return nil
}

// Close unlocks and closes the file.
func (w *JSONL) Close() error { return w.f.Close() }

// ReadJSONL calls f with every complete line of a JSON-lines file (a last
// line without its newline is a killed writer's and is skipped).
func ReadJSONL(path string, f func(line int, b []byte) error) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	if i := bytes.LastIndexByte(b, '\n'); i+1 != len(b) {
		b = b[:i+1]
	}
	sc := bufio.NewScanner(bytes.NewReader(b))
	sc.Buffer(make([]byte, 1<<16), 1<<26)
	for line := 1; sc.Scan(); line++ {
		if len(bytes.TrimSpace(sc.Bytes())) == 0 {
			continue
		}
		if err := f(line, sc.Bytes()); err != nil {
			return fmt.Errorf("%s line %d: %w", path, line, err)
		}
	}
	return sc.Err()
}

// anys converts records for Append.
func anys(recs []Record) []any {
	out := make([]any, len(recs))
	for i, r := range recs {
		out[i] = r
	}
	return out
}
