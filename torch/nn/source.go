// Package nn holds the layers the models are built from and the weight
// loader they take their parameters from.
//
// Loading follows candle's VarBuilder: a module pulls each weight by key while
// it is built (Builder.Get), the builder checks shape and dtype, converts to
// the model's dtype and device, and Builder.Finish reports every missing,
// mis-shaped or unexpected key at once.
package nn

import (
	"fmt"
	"sort"

	"github.com/dp2osr/dp2o/torch"
	"github.com/dp2osr/dp2o/torch/pickle"
	"github.com/dp2osr/dp2o/torch/safetensors"
)

// Source is a set of named tensors a Builder reads from.
type Source interface {
	// Names lists every key, sorted.
	Names() []string
	// Meta returns the shape and dtype of key.
	Meta(key string) (shape []int64, dtype torch.DType, ok bool)
	// Load returns key as a new CPU tensor (the caller closes it).
	Load(key string) (*torch.Tensor, error)
	// Close releases the source (mapped files).
	Close() error
}

// SafetensorsSource reads a safetensors file or a sharded index.
type SafetensorsSource struct {
	r    safetensors.Reader
	path string
}

// OpenSafetensors opens a .safetensors file, or a sharded checkpoint through
// its .index.json.
func OpenSafetensors(path string) (*SafetensorsSource, error) {
	r, err := safetensors.OpenAny(path)
	if err != nil {
		return nil, err
	}
	return &SafetensorsSource{r: r, path: path}, nil
}

// Names lists every key.
func (s *SafetensorsSource) Names() []string { return s.r.Names() }

// Meta returns the shape and dtype of key.
func (s *SafetensorsSource) Meta(key string) ([]int64, torch.DType, bool) {
	info, ok := s.r.Info(key)
	if !ok {
		return nil, 0, false
	}
	dt, err := torch.DTypeFromSafetensors(string(info.DType))
	if err != nil {
		return info.Shape, -1, true
	}
	return info.Shape, dt, true
}

// Load copies key from the mapped file into a CPU tensor.
func (s *SafetensorsSource) Load(key string) (*torch.Tensor, error) {
	info, ok := s.r.Info(key)
	if !ok {
		return nil, fmt.Errorf("%s: no tensor %q", s.path, key)
	}
	dt, err := torch.DTypeFromSafetensors(string(info.DType))
	if err != nil {
		return nil, fmt.Errorf("%s: tensor %q: %w", s.path, key, err)
	}
	b, err := s.r.Data(key)
	if err != nil {
		return nil, err
	}
	t, err := torch.FromBytes(b, dt, info.Shape)
	if err != nil {
		return nil, fmt.Errorf("%s: tensor %q: %w", s.path, key, err)
	}
	return t, nil
}

// Close unmaps the file(s).
func (s *SafetensorsSource) Close() error { return s.r.Close() }

// MapSource is an in-memory source of CPU tensors (a state dict). Close
// frees the tensors it holds.
type MapSource map[string]*torch.Tensor

// Names lists every key.
func (m MapSource) Names() []string {
	ks := make([]string, 0, len(m))
	for k := range m {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	return ks
}

// Meta returns the shape and dtype of key.
func (m MapSource) Meta(key string) ([]int64, torch.DType, bool) {
	t, ok := m[key]
	if !ok {
		return nil, 0, false
	}
	return t.Shape(), t.DType(), true
}

// Load returns a new handle to key's tensor.
func (m MapSource) Load(key string) (*torch.Tensor, error) {
	t, ok := m[key]
	if !ok {
		return nil, fmt.Errorf("no tensor %q", key)
	}
	return torch.Unscope(t.Alias()), nil
}

// Close frees every tensor.
func (m MapSource) Close() error {
	for _, t := range m {
		t.Close()
	}
	return nil
}

// LoadPth reads a PyTorch .pth checkpoint (zip format) through the
// allowlisted unpickler into a MapSource of CPU tensors.
func LoadPth(path string, opts ...pickle.Option) (MapSource, error) {
	sd, err := pickle.Load(path, opts...)
	if err != nil {
		return nil, err
	}
	m := MapSource{}
	for _, t := range sd.Tensors {
		dt, err := torch.DTypeFromSafetensors(t.DType)
		if err != nil {
			m.Close()
			return nil, fmt.Errorf("%s: tensor %q: %w", path, t.Name, err)
		}
		tt, err := torch.FromBytes(t.Data, dt, t.Shape)
		if err != nil {
			m.Close()
			return nil, fmt.Errorf("%s: tensor %q: %w", path, t.Name, err)
		}
		m[t.Name] = torch.Unscope(tt)
	}
	return m, nil
}

// LoadFile opens a checkpoint (safetensors, a sharded .json index, or a
// .bin/.pth pickle: see OpenWeights), builds a model from it with
// fromSource, and closes the file: the shared body of the models' file
// loaders. Errors of fromSource are prefixed with path.
func LoadFile[M any](path string, fromSource func(Source) (M, error)) (M, error) {
	var zero M
	src, err := OpenWeights(path)
	if err != nil {
		return zero, err
	}
	defer src.Close()
	m, err := fromSource(src)
	if err != nil {
		return zero, fmt.Errorf("%s: %w", path, err)
	}
	return m, nil
}
