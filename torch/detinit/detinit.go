// Package detinit builds deterministic weights by the "dp2o-init-v1" rule
// (fixtures/DETINIT.md), so that tests and benchmarks can rebuild models too
// large to ship from a manifest (key → shape and dtype) and a seed,
// bit-identical to the Python side because both draw from libtorch's own
// CPU generator:
//
//  1. one CPU generator seeded with seed;
//  2. keys visited in sorted byte-wise order; each floating-point key draws
//     r = randn(shape) in float32 (integer keys are zeros and draw nothing);
//  3. scaled: running_var → 1 + 0.1·|r|; 2 or more dims → r / sqrt(fan_in)
//     with fan_in = product of shape[1:]; 1 dim ending in weight, gamma or
//     scale → 1 + 0.1·r; otherwise (biases, running means, 0-d) → 0.02·r;
//  4. cast to the key's dtype.
package detinit

import (
	"encoding/json"
	"fmt"
	"math"
	"os"
	"sort"
	"strings"

	"github.com/dp2osr/dp2o/torch"
	"github.com/dp2osr/dp2o/torch/nn"
)

// Rule is the name of the initialisation rule this package implements.
const Rule = "dp2o-init-v1"

// Spec is the shape and dtype of one key of a manifest.
type Spec struct {
	Shape []int64
	DType torch.DType
}

type specJSON struct {
	Shape []int64 `json:"shape"`
	DType string  `json:"dtype"`
}

// UnmarshalJSON reads {"shape": [...], "dtype": "float32"}.
func (s *Spec) UnmarshalJSON(b []byte) error {
	var j specJSON
	if err := json.Unmarshal(b, &j); err != nil {
		return err
	}
	if j.Shape == nil {
		return fmt.Errorf("detinit: spec without a shape: %s", b)
	}
	dt, err := torch.ParseDType(j.DType)
	if err != nil {
		return fmt.Errorf("detinit: %w", err)
	}
	s.Shape, s.DType = j.Shape, dt
	return nil
}

// MarshalJSON writes {"shape": [...], "dtype": "float32"}.
func (s Spec) MarshalJSON() ([]byte, error) {
	shape := s.Shape
	if shape == nil {
		shape = []int64{}
	}
	return json.Marshal(specJSON{Shape: shape, DType: s.DType.String()})
}

// Manifest is a manifest file: the specs and, for the detinit.json form,
// the seed.
type Manifest struct {
	Specs   map[string]Spec
	Seed    uint64
	HasSeed bool
}

// LoadManifest reads either a plain manifest ({"key": {"shape", "dtype"}, …},
// as the model fixtures ship) or the detinit.json form
// ({"seed": s, "manifest": {…}}).
func LoadManifest(path string) (*Manifest, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var wrapped struct {
		Seed     *uint64         `json:"seed"`
		Manifest map[string]Spec `json:"manifest"`
	}
	var probe map[string]json.RawMessage
	if err := json.Unmarshal(raw, &probe); err != nil {
		return nil, fmt.Errorf("detinit: %s: %w", path, err)
	}
	if _, ok := probe["manifest"]; ok {
		if err := json.Unmarshal(raw, &wrapped); err != nil {
			return nil, fmt.Errorf("detinit: %s: %w", path, err)
		}
		m := &Manifest{Specs: wrapped.Manifest}
		if wrapped.Seed != nil {
			m.Seed, m.HasSeed = *wrapped.Seed, true
		}
		return m, nil
	}
	var specs map[string]Spec
	if err := json.Unmarshal(raw, &specs); err != nil {
		return nil, fmt.Errorf("detinit: %s: %w", path, err)
	}
	return &Manifest{Specs: specs}, nil
}

// Build applies the rule with the manifest's own seed.
func (m *Manifest) Build(dev torch.Device) (nn.MapSource, error) {
	if !m.HasSeed {
		return nil, fmt.Errorf("detinit: the manifest has no seed; use Build with one")
	}
	return Build(m.Specs, m.Seed, dev)
}

// Build returns the tensors of manifest initialised by the rule from seed,
// on dev. The caller closes the source.
func Build(manifest map[string]Spec, seed uint64, dev torch.Device) (src nn.MapSource, err error) {
	keys := make([]string, 0, len(manifest))
	for k, s := range manifest {
		for _, d := range s.Shape {
			if d < 0 {
				return nil, fmt.Errorf("detinit: %s: negative dimension in %v", k, s.Shape)
			}
		}
		if _, err := torch.DTypeFromSafetensors(s.DType.SafetensorsCode()); err != nil {
			return nil, fmt.Errorf("detinit: %s: %w", k, err)
		}
		keys = append(keys, k)
	}
	sort.Strings(keys) // byte-wise
	gen, err := torch.NewGenerator(torch.CPU, seed)
	if err != nil {
		return nil, err
	}
	src = nn.MapSource{}
	defer func() {
		if err != nil {
			src.Close()
			src = nil
		}
	}()
	defer torch.Recover(&err)
	for _, k := range keys {
		s := manifest[k]
		t := torch.Scoped(func() *torch.Tensor {
			var t *torch.Tensor
			if s.DType.IsFloat() {
				t = scale(k, s.Shape, torch.Randn(s.Shape, gen, torch.Float32, torch.CPU)).To(s.DType)
			} else {
				t = torch.Zeros(s.Shape, s.DType, torch.CPU)
			}
			if dev != torch.CPU {
				t = t.ToDevice(dev)
			}
			return t
		})
		src[k] = torch.Unscope(t)
	}
	return src, nil
}

// scale applies step 3 of the rule to a float32 draw r of key.
func scale(key string, shape []int64, r *torch.Tensor) *torch.Tensor {
	switch {
	case strings.HasSuffix(key, "running_var"):
		return r.Abs().MulScalar(0.1).AddScalar(1)
	case len(shape) >= 2:
		fanIn := int64(1)
		for _, d := range shape[1:] {
			fanIn *= d
		}
		return r.DivScalar(math.Sqrt(float64(fanIn)))
	case len(shape) == 1 && (strings.HasSuffix(key, "weight") || strings.HasSuffix(key, "gamma") || strings.HasSuffix(key, "scale")):
		return r.MulScalar(0.1).AddScalar(1)
	}
	return r.MulScalar(0.02)
}
