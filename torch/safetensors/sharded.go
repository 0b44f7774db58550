package safetensors

import (
	"encoding/json"
	"errors"
	"io"
	"os"
	"path/filepath"
	"slices"
)

// maxIndexSize bounds the size of an index file read into memory.
const maxIndexSize = 100_000_000

// Sharded is a checkpoint split over several safetensors files and described
// by an index file ("model.safetensors.index.json"):
//
//	{"metadata": {...}, "weight_map": {"a.weight": "model-00001-of-00002.safetensors", ...}}
//
// Only the tensors listed in weight_map are visible. Its methods other than
// Close may be called concurrently.
type Sharded struct {
	path     string
	shards   map[string]*File // by file name as written in the index
	files    []string         // sorted keys of shards
	weights  map[string]*File // tensor name -> shard
	names    []string
	metadata map[string]any
}

// OpenIndex reads the index file at path and opens every shard it names,
// relative to the index's directory, once. It checks that every tensor of
// weight_map exists in its shard. The caller must Close the result.
func OpenIndex(path string) (*Sharded, error) {
	fail := func(err error) (*Sharded, error) { return nil, &Error{Path: path, Err: err} }
	f, err := os.Open(path)
	if err != nil {
		return fail(err)
	}
	buf, err := io.ReadAll(io.LimitReader(f, maxIndexSize+1))
	f.Close()
	if err != nil {
		return fail(err)
	}
	if len(buf) > maxIndexSize {
		return fail(errFormat("index larger than %d bytes", maxIndexSize))
	}
	var idx struct {
		Metadata  map[string]any     `json:"metadata"`
		WeightMap *map[string]string `json:"weight_map"`
	}
	if err := json.Unmarshal(buf, &idx); err != nil {
		return fail(errFormat("index is not valid JSON: %v", err))
	}
	if idx.WeightMap == nil {
		return fail(errFormat("index has no weight_map"))
	}

	s := &Sharded{
		path:     path,
		shards:   map[string]*File{},
		weights:  make(map[string]*File, len(*idx.WeightMap)),
		metadata: idx.Metadata,
	}
	if s.metadata == nil {
		s.metadata = map[string]any{}
	}
	dir := filepath.Dir(path)
	for name := range *idx.WeightMap {
		s.names = append(s.names, name)
	}
	slices.Sort(s.names)
	for _, name := range s.names {
		file := (*idx.WeightMap)[name]
		shard, ok := s.shards[file]
		if !ok {
			if !filepath.IsLocal(file) {
				s.Close()
				return nil, &Error{Path: path, Tensor: name, Err: errFormat("shard %q is not a path inside the index directory", file)}
			}
			shard, err = Open(filepath.Join(dir, file))
			if err != nil {
				s.Close()
				return nil, err // names the shard file
			}
			s.shards[file] = shard
			s.files = append(s.files, file)
		}
		if _, ok := shard.tensors[name]; !ok {
			s.Close()
			return nil, &Error{Path: path, Tensor: name, Err: errFormat("not found in shard %s", file)}
		}
		s.weights[name] = shard
	}
	slices.Sort(s.files)
	return s, nil
}

// Path returns the path of the index file.
func (s *Sharded) Path() string { return s.path }

// Names returns the tensor names of weight_map in sorted order.
func (s *Sharded) Names() []string { return slices.Clone(s.names) }

// Info describes the named tensor; Offsets are relative to its shard's data
// section.
func (s *Sharded) Info(name string) (TensorInfo, bool) {
	shard, ok := s.weights[name]
	if !ok {
		return TensorInfo{}, false
	}
	return shard.Info(name)
}

// Data returns the raw bytes of the named tensor from its shard; see
// [File.Data].
func (s *Sharded) Data(name string) ([]byte, error) {
	shard, ok := s.weights[name]
	if !ok {
		return nil, &Error{Path: s.path, Tensor: name, Err: ErrNotFound}
	}
	return shard.Data(name)
}

// Shards returns the shard file names of the index, sorted.
func (s *Sharded) Shards() []string { return slices.Clone(s.files) }

// IndexMetadata returns the index's "metadata" object as decoded by
// encoding/json (numbers are float64), or an empty map.
func (s *Sharded) IndexMetadata() map[string]any { return s.metadata }

// Close closes every shard. It is safe to call more than once.
func (s *Sharded) Close() error {
	var errs []error
	for _, f := range s.shards {
		errs = append(errs, f.Close())
	}
	return errors.Join(errs...)
}
