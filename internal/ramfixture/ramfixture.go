// Package ramfixture rebuilds the weights of the RAM fixtures
// (fixtures/ram/weights): the base model from its manifest and seed by the
// dp2o-init-v1 rule with the documented overrides applied, and the DAPE LoRA
// from its manifest (checked against the shipped lora.safetensors by the
// tests).
package ramfixture

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/dp2osr/dp2o/torch"
	"github.com/dp2osr/dp2o/torch/detinit"
	"github.com/dp2osr/dp2o/torch/nn"
)

// Override is one entry of weights.json base.overrides.
type Override struct {
	Key   string  `json:"key"`
	Op    string  `json:"op"` // "mul" or "set"
	Value float64 `json:"value"`
}

// Part is the base or lora section of weights.json.
type Part struct {
	Manifest    string               `json:"manifest"`
	Seed        uint64               `json:"seed"`
	Keys        int                  `json:"keys"`
	Elements    int64                `json:"elements"`
	File        string               `json:"file"`
	Overrides   []Override           `json:"overrides"`
	CheckValues map[string][]float64 `json:"check_values"`
}

// Weights is weights.json.
type Weights struct {
	Convention string `json:"convention"`
	Base       Part   `json:"base"`
	LoRA       Part   `json:"lora"`
	dir        string
}

// Read reads weights.json from the weights folder dir.
func Read(dir string) (*Weights, error) {
	raw, err := os.ReadFile(filepath.Join(dir, "weights.json"))
	if err != nil {
		return nil, err
	}
	w := &Weights{dir: dir}
	if err := json.Unmarshal(raw, w); err != nil {
		return nil, fmt.Errorf("%s: %w", filepath.Join(dir, "weights.json"), err)
	}
	if w.Convention != "" && !strings.HasPrefix(w.Convention, detinit.Rule) {
		return nil, fmt.Errorf("weights.json: convention %q, this code implements %s", w.Convention, detinit.Rule)
	}
	return w, nil
}

// Path is a file of the weights folder.
func (w *Weights) Path(name string) string { return filepath.Join(w.dir, name) }

func (w *Weights) build(p Part, keep func(string) bool) (nn.MapSource, error) {
	m, err := detinit.LoadManifest(w.Path(p.Manifest))
	if err != nil {
		return nil, err
	}
	if len(m.Specs) != p.Keys {
		return nil, fmt.Errorf("%s: %d keys, weights.json says %d", p.Manifest, len(m.Specs), p.Keys)
	}
	src, err := detinit.Build(m.Specs, p.Seed, torch.CPU)
	if err != nil {
		return nil, err
	}
	if keep != nil {
		for k, t := range src {
			if !keep(k) {
				t.Close()
				delete(src, k)
			}
		}
	}
	return src, nil
}

// BaseWeights rebuilds the RAM base weights with the overrides applied;
// keep, when not nil, selects the keys returned (all are drawn, in order).
func (w *Weights) BaseWeights(keep func(string) bool) (src nn.MapSource, err error) {
	src, err = w.build(w.Base, keep)
	if err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			src.Close()
		}
	}()
	defer torch.Recover(&err)
	for _, o := range w.Base.Overrides {
		t, ok := src[o.Key]
		if !ok {
			if keep == nil || keep(o.Key) {
				return nil, fmt.Errorf("override of %q: no such key", o.Key)
			}
			continue
		}
		switch o.Op {
		case "mul":
			t.MulScalar_(o.Value)
		case "set":
			t.Fill_(o.Value)
		default:
			return nil, fmt.Errorf("override of %q: unknown op %q", o.Key, o.Op)
		}
	}
	return src, nil
}

// LoRAWeights rebuilds the DAPE LoRA tensors from their manifest and seed.
func (w *Weights) LoRAWeights() (nn.MapSource, error) { return w.build(w.LoRA, nil) }

// Check compares the tensors of src named in checks (weights.json
// check_values: the first values in row-major order, exactly, then the
// float64 sum of all elements) and returns the first mismatch. Keys absent
// from src are skipped.
func Check(src nn.MapSource, checks map[string][]float64) error {
	for k, want := range checks {
		t, ok := src[k]
		if !ok {
			continue
		}
		if len(want) < 2 {
			return fmt.Errorf("check_values %q: want first values and a sum", k)
		}
		vals := t.Float64s()
		n := len(want) - 1
		if len(vals) < n {
			n = len(vals)
		}
		for i := 0; i < n; i++ {
			if vals[i] != want[i] {
				return fmt.Errorf("%s[%d] = %v, want %v", k, i, vals[i], want[i])
			}
		}
		var sum float64
		for _, v := range vals {
			sum += v
		}
		if d := sum - want[len(want)-1]; d > 1e-9*(1+abs(sum)) || -d > 1e-9*(1+abs(sum)) {
			return fmt.Errorf("%s: sum %v, want %v", k, sum, want[len(want)-1])
		}
	}
	return nil
}

func abs(x float64) float64 {
	if x < 0 {
		return -x
	}
	return x
}
