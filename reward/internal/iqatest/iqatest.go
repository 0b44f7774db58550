// Package iqatest reads the IQA fixture folders (fixtures/iqa/<metric>/:
// cases.json, manifest.json, fixed.safetensors, io.safetensors + io.json,
// the shared inputs) for the scorer tests: it rebuilds the deterministic
// weights, and checks a port's tensors against the stored ones (whole,
// sliced, or through their .stats) at the fixture README's tolerance.
package iqatest

import (
	"encoding/json"
	"fmt"
	"math"
	"os"
	"path"
	"path/filepath"
	"testing"

	"github.com/dp2osr/dp2o/internal/testutil"
	"github.com/dp2osr/dp2o/torch"
	"github.com/dp2osr/dp2o/torch/detinit"
	"github.com/dp2osr/dp2o/torch/nn"
)

// RelTol is the IQA fixtures' tolerance (fixtures/iqa/README.md): per stored
// tensor max|got−exp| ≤ RelTol·max|exp|; scores also |got−exp| ≤
// RelTol·|exp| + ScoreAbsTol; .stats element-wise ≤ RelTol·max(|min|,|max|).
const (
	RelTol      = 1e-4
	ScoreAbsTol = 1e-6
)

// Model is cases.json's "model": how the weights are regenerated and which
// published checkpoint layout the loader meets.
type Model struct {
	Init      string             `json:"init"`
	Seed      uint64             `json:"seed"`
	Manifest  string             `json:"manifest"`
	PostScale map[string]float64 `json:"post_scale"`
	Fixed     *string            `json:"fixed"`
	Aliases   map[string]string  `json:"aliases"`
	Published json.RawMessage    `json:"published"`
}

// Case is one entry of cases.json's "cases". Metric-specific fields stay in
// Raw.
type Case struct {
	Name   string  `json:"name"`
	Metric string  `json:"metric"`
	Image  string  `json:"image"`
	Dist   string  `json:"dist"`
	Ref    string  `json:"ref"`
	Shape  []int64 `json:"shape"`
	Score  string  `json:"score"`
	// Intermediates is true, false or a string (e.g. "whole").
	Intermediates json.RawMessage `json:"intermediates"`
	Raw           json.RawMessage `json:"-"`
}

// HasIntermediates reports whether the case stores intermediate tensors.
func (c Case) HasIntermediates() bool {
	var b bool
	if json.Unmarshal(c.Intermediates, &b) == nil {
		return b
	}
	return len(c.Intermediates) > 0 && string(c.Intermediates) != "null"
}

// Folder is one fixture folder with its cases.json read.
type Folder struct {
	Dir    string // absolute path of the folder
	Rel    string // the folder relative to the fixture root
	Metric string `json:"metric"`
	// PyiqaName is cases.json's pyiqa_name when it is one name;
	// PyiqaNames lists it either way (a folder may cover several metrics,
	// e.g. afine: ["afine_fr", "afine_nr"]).
	PyiqaName  string   `json:"-"`
	PyiqaNames []string `json:"-"`
	// Mode is "FR" or "NR" when the folder has one mode; Modes maps each
	// metric name to its mode either way.
	Mode        string            `json:"-"`
	Modes       map[string]string `json:"-"`
	LowerBetter bool              `json:"lower_better"`
	Inputs      string            `json:"inputs"`
	Model       Model             `json:"model"`
	Cases       []Case            `json:"-"`
	// Raw holds every top-level field of cases.json.
	Raw map[string]json.RawMessage `json:"-"`
}

// decodeNames fills PyiqaName(s) and Mode(s) from their string, list or
// map forms.
func (f *Folder) decodeNames() error {
	if raw, ok := f.Raw["pyiqa_name"]; ok {
		var one string
		if json.Unmarshal(raw, &one) == nil {
			f.PyiqaName, f.PyiqaNames = one, []string{one}
		} else if err := json.Unmarshal(raw, &f.PyiqaNames); err != nil {
			return fmt.Errorf("pyiqa_name: want a name or a list of names: %w", err)
		}
	}
	if raw, ok := f.Raw["mode"]; ok {
		var one string
		if json.Unmarshal(raw, &one) == nil {
			f.Mode = one
			f.Modes = map[string]string{}
			for _, n := range f.PyiqaNames {
				f.Modes[n] = one
			}
		} else if err := json.Unmarshal(raw, &f.Modes); err != nil {
			return fmt.Errorf("mode: want FR/NR or a map of them: %w", err)
		}
	}
	return nil
}

// Load reads rel/cases.json (rel relative to the fixture root, e.g.
// "iqa/lpips"; see testutil.Fixture).
func Load(tb testing.TB, rel string) *Folder {
	tb.Helper()
	dir := testutil.Fixture(tb, rel)
	raw, err := os.ReadFile(filepath.Join(dir, "cases.json"))
	if err != nil {
		tb.Fatal(err)
	}
	f := &Folder{Dir: dir, Rel: rel}
	if err := json.Unmarshal(raw, f); err != nil {
		tb.Fatalf("%s/cases.json: %v", rel, err)
	}
	if err := json.Unmarshal(raw, &f.Raw); err != nil {
		tb.Fatalf("%s/cases.json: %v", rel, err)
	}
	if err := f.decodeNames(); err != nil {
		tb.Fatalf("%s/cases.json: %v", rel, err)
	}
	var cases []json.RawMessage
	if err := json.Unmarshal(f.Raw["cases"], &cases); err != nil {
		tb.Fatalf("%s/cases.json: cases: %v", rel, err)
	}
	for _, c := range cases {
		var cs Case
		if err := json.Unmarshal(c, &cs); err != nil {
			tb.Fatalf("%s/cases.json: case: %v", rel, err)
		}
		cs.Raw = c
		f.Cases = append(f.Cases, cs)
	}
	if len(f.Cases) == 0 {
		tb.Fatalf("%s/cases.json: no cases", rel)
	}
	return f
}

// Field decodes the top-level field name of cases.json into v.
func (f *Folder) Field(tb testing.TB, name string, v any) {
	tb.Helper()
	raw, ok := f.Raw[name]
	if !ok {
		tb.Fatalf("%s/cases.json has no %q", f.Dir, name)
	}
	if err := json.Unmarshal(raw, v); err != nil {
		tb.Fatalf("%s/cases.json: %s: %v", f.Dir, name, err)
	}
}

// Path is a file of the folder.
func (f *Folder) Path(name string) string { return filepath.Join(f.Dir, name) }

// Weights rebuilds the network's state dict (the manifest's keys, pyiqa's
// layout) on the CPU: dp2o-init-v1 from the manifest and the seed, the
// post_scale factors, then the fixed tensors. The test's cleanup frees it.
func (f *Folder) Weights(tb testing.TB) nn.MapSource {
	tb.Helper()
	if f.Model.Init != detinit.Rule {
		tb.Fatalf("%s: init rule %q, want %q", f.Dir, f.Model.Init, detinit.Rule)
	}
	m, err := detinit.LoadManifest(f.Path(f.Model.Manifest))
	if err != nil {
		tb.Fatal(err)
	}
	src, err := detinit.Build(m.Specs, f.Model.Seed, torch.CPU)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { src.Close() })
	for k, s := range f.Model.PostScale {
		t, ok := src[k]
		if !ok {
			tb.Fatalf("%s: post_scale key %q not in the manifest", f.Dir, k)
		}
		t.MulScalar_(s)
	}
	if f.Model.Fixed != nil && *f.Model.Fixed != "" {
		fixed := testutil.Tensors(tb, f.Path(*f.Model.Fixed))
		for k, t := range fixed {
			if old, ok := src[k]; ok {
				old.Close()
			}
			src[k] = torch.Unscope(t.Clone())
		}
	}
	return src
}

// Images reads the shared input images the folder's cases use.
func (f *Folder) Images(tb testing.TB) map[string]*torch.Tensor {
	tb.Helper()
	// Resolved from the fixture root, so that the inputs several metrics
	// share are kept once (testutil.Fixture's module-level testdata).
	return testutil.Tensors(tb, testutil.Fixture(tb, path.Clean(path.Join(f.Rel, filepath.ToSlash(f.Inputs)))))
}

// TensorMeta is one io.json entry.
type TensorMeta struct {
	Shape       []int64           `json:"shape"`
	DType       string            `json:"dtype"`
	Slice       []json.RawMessage `json:"slice"`
	StoredShape []int64           `json:"stored_shape"`
	Stats       string            `json:"stats"`
	Note        string            `json:"note"`
}

// Expected is io.safetensors with io.json.
type Expected struct {
	Tensors map[string]*torch.Tensor
	Meta    map[string]TensorMeta
}

// Expected reads the folder's io.safetensors and io.json.
func (f *Folder) Expected(tb testing.TB) *Expected {
	tb.Helper()
	e := &Expected{Tensors: testutil.Tensors(tb, f.Path("io.safetensors"))}
	raw, err := os.ReadFile(f.Path("io.json"))
	if err != nil {
		tb.Fatal(err)
	}
	if err := json.Unmarshal(raw, &e.Meta); err != nil {
		tb.Fatalf("%s/io.json: %v", f.Dir, err)
	}
	return e
}

// Has reports whether name is an expected tensor.
func (e *Expected) Has(name string) bool {
	_, ok := e.Meta[name]
	return ok
}

// Check compares got (the whole tensor) with the expected tensor name: the
// stored slice at RelTol·max|exp|, and the whole tensor's stats when the
// entry is sliced. It fails the test fatally, naming the tensor.
func (e *Expected) Check(tb testing.TB, name string, got *torch.Tensor) {
	tb.Helper()
	meta, ok := e.Meta[name]
	if !ok {
		tb.Fatalf("%s: not in io.json", name)
	}
	want, ok := e.Tensors[name]
	if !ok {
		tb.Fatalf("%s: not in io.safetensors", name)
	}
	s := torch.NewScope()
	defer s.Close()
	g := got.ToDevice(torch.CPU).To(torch.Float64)
	if fmt.Sprint(g.Shape()) != fmt.Sprint(meta.Shape) {
		tb.Fatalf("%s: shape %v, want %v", name, g.Shape(), meta.Shape)
	}
	if meta.Slice != nil {
		var err error
		if g, err = applySlice(g, meta.Slice); err != nil {
			tb.Fatalf("%s: %v", name, err)
		}
	}
	w := want.To(torch.Float64)
	maxExp := w.Abs().Max().Item()
	testutil.AssertClose(tb, name, g, w, RelTol*maxExp, 0)
	if meta.Stats != "" {
		ws, ok := e.Tensors[meta.Stats]
		if !ok {
			tb.Fatalf("%s: no stats tensor %q", name, meta.Stats)
		}
		gs := Stats(got)
		wv := ws.Float64s()
		bound := RelTol * math.Max(math.Abs(wv[2]), math.Abs(wv[3]))
		for i := range wv {
			if d := math.Abs(gs[i] - wv[i]); d > bound {
				tb.Fatalf("%s: stats[%d] (mean, std, min, max, mean|x|) = %.8g, want %.8g (|diff| %.3g > %.3g)", name, i, gs[i], wv[i], d, bound)
			}
		}
	}
}

// CheckScores compares scores with the expected score tensor name element
// by element: |got−exp| ≤ RelTol·|exp| + ScoreAbsTol, and also the
// per-tensor bound of Check.
func (e *Expected) CheckScores(tb testing.TB, name string, got []float64) {
	tb.Helper()
	want, ok := e.Tensors[name]
	if !ok {
		tb.Fatalf("%s: not in io.safetensors", name)
	}
	wv := want.Float64s()
	if len(wv) != len(got) {
		tb.Fatalf("%s: %d scores, want %d", name, len(got), len(wv))
	}
	maxExp := 0.0
	for _, v := range wv {
		maxExp = math.Max(maxExp, math.Abs(v))
	}
	for i := range wv {
		d := math.Abs(got[i] - wv[i])
		if d > RelTol*math.Abs(wv[i])+ScoreAbsTol || d > RelTol*maxExp+ScoreAbsTol {
			tb.Fatalf("%s[%d]: score %.9g, want %.9g (|diff| %.3g)", name, i, got[i], wv[i], d)
		}
		tb.Logf("%s[%d]: score %.9g, want %.9g (|diff| %.3g, rel %.3g)", name, i, got[i], wv[i], d, d/math.Abs(wv[i]))
	}
}

// Stats is the fixtures' summary of a whole tensor, in float64:
// [mean, std (population), min, max, mean |x|].
func Stats(t *torch.Tensor) []float64 {
	s := torch.NewScope()
	defer s.Close()
	x := t.ToDevice(torch.CPU).To(torch.Float64)
	return []float64{
		x.Mean().Item(), x.StdAll(false).Item(), x.Min().Item(), x.Max().Item(), x.Abs().Mean().Item(),
	}
}

// applySlice applies io.json's slice: one entry per leading dimension,
// null = whole, [start, stop] or [start, stop, step].
func applySlice(t *torch.Tensor, sl []json.RawMessage) (*torch.Tensor, error) {
	for d, raw := range sl {
		if string(raw) == "null" {
			continue
		}
		var v []int64
		if err := json.Unmarshal(raw, &v); err != nil || len(v) < 2 || len(v) > 3 {
			return nil, fmt.Errorf("bad slice entry %s", raw)
		}
		step := int64(1)
		if len(v) == 3 {
			step = v[2]
		}
		stop := min(v[1], t.Size(d))
		t = t.Slice(int64(d), v[0], stop, step)
	}
	return t, nil
}
