package qalign

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/dp2osr/dp2o/torch"
	"github.com/dp2osr/dp2o/torch/pickle"
)

// pickleSource reads PyTorch .bin checkpoints (one file, or shards listed
// by a pytorch_model.bin.index.json) one tensor at a time: Meta reads the
// tensor it is asked about (and keeps it for the Load that follows), so
// that at most one tensor of the checkpoint is in host memory besides the
// model being built. nn.OpenWeights would read every shard into memory
// first: a second full copy of a 7B model.
type pickleSource struct {
	files  map[string]string // key → file
	names  []string
	cached string
	tensor *torch.Tensor
	err    error // the first read error Meta met
}

// openPickle opens a .bin file or a .bin shard index.
func openPickle(path string) (*pickleSource, error) {
	s := &pickleSource{files: map[string]string{}}
	if strings.HasSuffix(path, ".json") {
		b, err := os.ReadFile(path)
		if err != nil {
			return nil, err
		}
		var idx struct {
			WeightMap map[string]string `json:"weight_map"`
		}
		if err := json.Unmarshal(b, &idx); err != nil {
			return nil, fmt.Errorf("%s: index is not valid JSON: %w", path, err)
		}
		if len(idx.WeightMap) == 0 {
			return nil, fmt.Errorf("%s: index has no weight_map", path)
		}
		shards := map[string]bool{}
		for k, f := range idx.WeightMap {
			if !filepath.IsLocal(f) {
				return nil, fmt.Errorf("%s: shard %q is not a path inside the index's folder", path, f)
			}
			full := filepath.Join(filepath.Dir(path), f)
			s.files[k] = full
			shards[full] = true
		}
		// Every shard must be there and hold what the index says.
		for f := range shards {
			names, err := pickleNames(f)
			if err != nil {
				return nil, fmt.Errorf("%s: %w", path, err)
			}
			for _, n := range names {
				if s.files[n] != f {
					return nil, fmt.Errorf("%s: shard %s holds %q, which the index puts elsewhere", path, filepath.Base(f), n)
				}
			}
			if want := countIn(s.files, f); want != len(names) {
				return nil, fmt.Errorf("%s: shard %s holds %d tensors, the index lists %d", path, filepath.Base(f), len(names), want)
			}
		}
	} else {
		names, err := pickleNames(path)
		if err != nil {
			return nil, err
		}
		for _, n := range names {
			s.files[n] = path
		}
	}
	for k := range s.files {
		s.names = append(s.names, k)
	}
	sort.Strings(s.names)
	return s, nil
}

func countIn(files map[string]string, f string) int {
	n := 0
	for _, v := range files {
		if v == f {
			n++
		}
	}
	return n
}

// pickleNames lists the tensor names of a .bin without reading storages.
func pickleNames(path string) ([]string, error) {
	var names []string
	_, err := pickle.Load(path, pickle.WithStripPrefix(""), pickle.WithFilter(func(n string) bool {
		names = append(names, n)
		return false
	}))
	return names, err
}

// Names lists every key, sorted.
func (s *pickleSource) Names() []string { return s.names }

// fetch makes key the cached tensor.
func (s *pickleSource) fetch(key string) error {
	if s.cached == key && s.tensor != nil {
		return nil
	}
	s.drop()
	f, ok := s.files[key]
	if !ok {
		return fmt.Errorf("no tensor %q", key)
	}
	sd, err := pickle.Load(f, pickle.WithStripPrefix(""), pickle.WithFilter(func(n string) bool { return n == key }))
	if err != nil {
		return err
	}
	if len(sd.Tensors) != 1 {
		return fmt.Errorf("%s: tensor %q not found", f, key)
	}
	pt := sd.Tensors[0]
	dt, err := torch.DTypeFromSafetensors(pt.DType)
	if err != nil {
		return fmt.Errorf("%s: tensor %q: %w", f, key, err)
	}
	t, err := torch.FromBytes(pt.Data, dt, pt.Shape)
	if err != nil {
		return fmt.Errorf("%s: tensor %q: %w", f, key, err)
	}
	s.cached, s.tensor = key, torch.Unscope(t)
	return nil
}

func (s *pickleSource) drop() {
	if s.tensor != nil {
		s.tensor.Close()
	}
	s.cached, s.tensor = "", nil
}

// Meta returns the shape and dtype of key (reading it).
func (s *pickleSource) Meta(key string) ([]int64, torch.DType, bool) {
	if _, ok := s.files[key]; !ok {
		return nil, 0, false
	}
	if err := s.fetch(key); err != nil {
		if s.err == nil {
			s.err = err
		}
		return []int64{-1}, torch.Float32, true
	}
	return s.tensor.Shape(), s.tensor.DType(), true
}

// Load returns key as a new CPU tensor; the source lets go of it.
func (s *pickleSource) Load(key string) (*torch.Tensor, error) {
	if err := s.fetch(key); err != nil {
		return nil, err
	}
	t := s.tensor
	s.cached, s.tensor = "", nil
	return t, nil
}

// Close frees the cached tensor.
func (s *pickleSource) Close() error {
	s.drop()
	return nil
}
