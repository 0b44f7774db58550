package lpips

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/dp2osr/dp2o/internal/testutil"
	"github.com/dp2osr/dp2o/reward"
	"github.com/dp2osr/dp2o/reward/internal/iqatest"
	"github.com/dp2osr/dp2o/torch"
	"github.com/dp2osr/dp2o/torch/nn"
	"github.com/dp2osr/dp2o/torch/pickle"
)

// folders are the fixture folders of the two backbones.
var folders = []string{"iqa/lpips", "iqa/lpips_vgg"}

type fixture struct {
	f       *iqatest.Folder
	weights nn.MapSource
	images  map[string]*torch.Tensor
	exp     *iqatest.Expected
	scorer  *Scorer
}

var (
	fixturesMu sync.Mutex
	fixtures   = map[string]*fixture{}
)

// load reads a folder and opens its scorer once per test binary (the
// weights and the scorer live until the process exits).
func load(t *testing.T, rel string) *fixture {
	t.Helper()
	fixturesMu.Lock()
	defer fixturesMu.Unlock()
	if fx, ok := fixtures[rel]; ok {
		return fx
	}
	// Loaded under a long-lived TB so that the cleanups do not run at the
	// end of the first test.
	tb := &keepTB{TB: t}
	fx := &fixture{f: iqatest.Load(tb, rel)}
	fx.weights = fx.f.Weights(tb)
	fx.images = fx.f.Images(tb)
	fx.exp = fx.f.Expected(tb)
	s, err := reward.Open(fx.f.PyiqaName, reward.OpenOptions{Source: fx.weights, Device: testutil.Device(t)})
	if err != nil {
		t.Fatal(err)
	}
	fx.scorer = s.(*Scorer)
	fixtures[rel] = fx
	return fx
}

// keepTB drops cleanups: the fixtures stay for the whole run.
type keepTB struct{ testing.TB }

func (k *keepTB) Cleanup(func()) {}

func onDevice(t *testing.T, x *torch.Tensor) *torch.Tensor {
	d := testutil.Device(t)
	if d == torch.CPU {
		return x
	}
	return x.ToDevice(d)
}

// TestFixtures runs every case of both folders through the model with its
// intermediates tapped, and compares every tensor io.json lists for the
// case (scores, scaled inputs, features, diffs, heads, per-layer means).
func TestFixtures(t *testing.T) {
	for _, rel := range folders {
		t.Run(filepath.Base(rel), func(t *testing.T) {
			fx := load(t, rel)
			testutil.NoLeak(t)
			for _, c := range fx.f.Cases {
				t.Run(c.Name, func(t *testing.T) {
					testutil.NoLeak(t)
					got := map[string]*torch.Tensor{}
					var order []string // tap order, so that a failure names the first diverging stage
					defer func() {
						for _, g := range got {
							g.Close()
						}
					}()
					m := fx.scorer.Model
					m.Tap = func(name string, x *torch.Tensor) {
						got[name] = torch.Unscope(x.Alias())
						order = append(order, name)
					}
					defer func() { m.Tap = nil }()
					s := torch.NewScope()
					defer s.Close()
					dist, ref := onDevice(t, fx.images[c.Dist]), onDevice(t, fx.images[c.Ref])
					if sh := dist.Shape(); len(sh) != len(c.Shape) {
						t.Fatalf("input %s shape %v, case says %v", c.Dist, sh, c.Shape)
					}
					scores, err := fx.scorer.Score(context.Background(), dist, ref)
					if err != nil {
						t.Fatal(err)
					}
					fx.exp.CheckScores(t, c.Score, scores)
					prefix := c.Name + "."
					checked := map[string]bool{c.Score: true}
					for _, tap := range order {
						if name := prefix + tap; fx.exp.Has(name) && !checked[name] {
							fx.exp.Check(t, name, got[tap])
							checked[name] = true
						}
					}
					for name, meta := range fx.exp.Meta {
						if strings.HasPrefix(name, prefix) && !checked[name] && !isStats(fx.exp.Meta, name) {
							t.Fatalf("%s (%s): the model taps no %q", name, meta.Note, strings.TrimPrefix(name, prefix))
						}
					}
					if c.HasIntermediates() && len(checked) < 2 {
						t.Fatalf("case %s stores intermediates but none were checked", c.Name)
					}
					t.Logf("%s: %d stored tensors checked", c.Name, len(checked))
				})
			}
		})
	}
}

// TestBatchedGroup scores every case of a folder that shares one reference
// in one batch, with the reference expanded (the reward's group call), and
// with the reference repeated (a plain batch of pairs).
func TestBatchedGroup(t *testing.T) {
	for _, rel := range folders {
		t.Run(filepath.Base(rel), func(t *testing.T) {
			fx := load(t, rel)
			testutil.NoLeak(t)
			byRef := map[string][]iqatest.Case{}
			for _, c := range fx.f.Cases {
				byRef[c.Ref] = append(byRef[c.Ref], c)
			}
			for refName, cases := range byRef {
				s := torch.NewScope()
				var dists []*torch.Tensor
				for _, c := range cases {
					dists = append(dists, fx.images[c.Dist])
				}
				img := onDevice(t, torch.Cat(dists, 0))
				ref := onDevice(t, fx.images[refName])
				modes := []string{"expanded", "repeated"}
				if rel != folders[0] {
					modes = modes[:1] // the repeated batch is plain batching: once is enough
				}
				for _, mode := range modes {
					r := ref.Expand([]int64{int64(len(cases)), -1, -1, -1})
					if mode == "repeated" {
						r = r.Contiguous()
					}
					scores, err := fx.scorer.Score(context.Background(), img, r)
					if err != nil {
						t.Fatal(err)
					}
					for i, c := range cases {
						fx.exp.CheckScores(t, c.Score, scores[i:i+1])
					}
				}
				s.Close()
			}
		})
	}
}

// TestPublishedLayout writes the deterministic weights as the published
// files (the heads of pyiqa's weights repository and a torchvision backbone
// checkpoint, named and keyed as cases.json's "published" says), loads them
// through reward.Open with Weights = that folder, and checks the scores.
func TestPublishedLayout(t *testing.T) {
	for _, rel := range folders {
		t.Run(filepath.Base(rel), func(t *testing.T) {
			fx := load(t, rel)
			testutil.NoLeak(t)
			var pub struct {
				HeadsFile      string            `json:"heads_file"`
				HeadsKeys      []string          `json:"heads_keys"`
				BackboneFile   string            `json:"backbone_file"`
				BackboneKeyMap map[string]string `json:"backbone_key_map"`
				Constants      []string          `json:"constants_not_in_any_file"`
			}
			if err := json.Unmarshal(fx.f.Model.Published, &pub); err != nil {
				t.Fatal(err)
			}
			dir := t.TempDir()
			var heads, backbone []pickle.Tensor
			for _, k := range pub.HeadsKeys {
				heads = append(heads, pickleTensor(t, k, fx.weights[k]))
			}
			constants := map[string]bool{}
			for _, k := range pub.Constants {
				constants[k] = true
			}
			for _, k := range fx.weights.Names() {
				if constants[k] || contains(pub.HeadsKeys, k) {
					continue
				}
				mapped := ""
				for from, to := range pub.BackboneKeyMap {
					if strings.HasPrefix(k, from+".") {
						mapped = to + strings.TrimPrefix(k, from)
					}
				}
				if mapped == "" {
					t.Fatalf("key %s is in no published file", k)
				}
				backbone = append(backbone, pickleTensor(t, mapped, fx.weights[k]))
			}
			// torchvision's checkpoint also holds the classifier, which
			// LPIPS does not use.
			s := torch.NewScope()
			backbone = append(backbone, pickleTensor(t, "classifier.1.weight", torch.Zeros([]int64{2, 3}, torch.Float32, torch.CPU)))
			s.Close()
			if err := pickle.Save(filepath.Join(dir, firstWord(pub.HeadsFile)), "", heads); err != nil {
				t.Fatal(err)
			}
			if err := pickle.Save(filepath.Join(dir, firstWord(pub.BackboneFile)), "", backbone); err != nil {
				t.Fatal(err)
			}
			sc, err := reward.Open(fx.f.PyiqaName, reward.OpenOptions{Weights: dir, Device: testutil.Device(t)})
			if err != nil {
				t.Fatal(err)
			}
			defer sc.Close()
			for _, c := range fx.f.Cases[:1] { // the loader is under test here
				s := torch.NewScope()
				scores, err := sc.Score(context.Background(), onDevice(t, fx.images[c.Dist]), onDevice(t, fx.images[c.Ref]))
				s.Close()
				if err != nil {
					t.Fatal(err)
				}
				fx.exp.CheckScores(t, c.Score, scores)
			}

			// A heads file without its backbone is refused by name.
			only := t.TempDir()
			if err := pickle.Save(filepath.Join(only, firstWord(pub.HeadsFile)), "", heads); err != nil {
				t.Fatal(err)
			}
			if _, err := reward.Open(fx.f.PyiqaName, reward.OpenOptions{Weights: only}); err == nil || !strings.Contains(err.Error(), "no ") {
				t.Fatalf("missing backbone: err = %v", err)
			}
			// A backbone missing a convolution is refused, naming the key.
			drop := t.TempDir()
			if err := pickle.Save(filepath.Join(drop, firstWord(pub.HeadsFile)), "", heads); err != nil {
				t.Fatal(err)
			}
			if err := pickle.Save(filepath.Join(drop, firstWord(pub.BackboneFile)), "", backbone[1:]); err != nil {
				t.Fatal(err)
			}
			_, err = reward.Open(fx.f.PyiqaName, reward.OpenOptions{Weights: drop})
			if err == nil || !errors.Is(err, nn.ErrWeights) || !strings.Contains(err.Error(), backbone[0].Name) {
				t.Fatalf("truncated backbone: err = %v", err)
			}
		})
	}
}

func pickleTensor(t *testing.T, name string, x *torch.Tensor) pickle.Tensor {
	t.Helper()
	c := x.Contiguous()
	defer c.Close()
	return pickle.Tensor{Name: name, DType: x.DType().SafetensorsCode(), Shape: x.Shape(), Data: append([]byte(nil), c.Bytes()...)}
}

// isStats reports whether name is some entry's .stats tensor.
func isStats(meta map[string]iqatest.TensorMeta, name string) bool {
	for _, m := range meta {
		if m.Stats == name {
			return true
		}
	}
	return false
}

func firstWord(s string) string { return strings.Fields(s)[0] }

func contains(ss []string, s string) bool {
	for _, x := range ss {
		if x == s {
			return true
		}
	}
	return false
}

// TestFastPath opens the scorers with OpenOptions.Fast (channels-last
// convolutions on the CPU) and checks every case's score at the README's
// score tolerance and every tapped intermediate against the whole stored
// tensor's stats (the accumulation order differs from pyiqa's, so the
// stored slices are not bit-identical; see Model.UseChannelsLast).
func TestFastPath(t *testing.T) {
	if testutil.Device(t) != torch.CPU {
		t.Skip("the fast path is a CPU layout")
	}
	for _, rel := range folders {
		t.Run(filepath.Base(rel), func(t *testing.T) {
			fx := load(t, rel)
			testutil.NoLeak(t)
			s, err := reward.Open(fx.f.PyiqaName, reward.OpenOptions{Source: fx.weights, Fast: true})
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			m := s.(*Scorer).Model
			if !m.ChannelsLast {
				t.Fatal("Fast did not select channels-last")
			}
			for _, c := range fx.f.Cases {
				if !c.HasIntermediates() && rel != folders[0] {
					continue // keeps the VGG part short
				}
				stats := map[string][]float64{}
				m.Tap = func(name string, x *torch.Tensor) { stats[name] = iqatest.Stats(x) }
				sc := torch.NewScope()
				scores, err := s.Score(context.Background(), fx.images[c.Dist], fx.images[c.Ref])
				sc.Close()
				if err != nil {
					t.Fatal(err)
				}
				fx.exp.CheckScores(t, c.Score, scores)
				for name, meta := range fx.exp.Meta {
					tap, ok := strings.CutPrefix(name, c.Name+".")
					if !ok || meta.Stats == "" {
						continue
					}
					got, ok := stats[tap]
					if !ok {
						t.Fatalf("%s: not tapped", name)
					}
					want := fx.exp.Tensors[meta.Stats].Float64s()
					bound := iqatest.RelTol * max(abs(want[2]), abs(want[3]))
					for i := range want {
						if d := abs(got[i] - want[i]); d > bound {
							t.Fatalf("%s stats[%d] = %.8g, want %.8g", name, i, got[i], want[i])
						}
					}
				}
			}
		})
	}
}

func abs(x float64) float64 {
	if x < 0 {
		return -x
	}
	return x
}

// TestSemanticWeighted checks "lpips+" and "lpips-vgg+" against the scores
// pyiqa gives with the fixture folders' weights (testdata/lpips_plus.json,
// written by scripts/iqa_lpips_plus.py from the repository's own copies of
// the fixtures, which it reads here too, whatever $DP2O_FIXTURES says: the
// values belong to those files).
func TestSemanticWeighted(t *testing.T) {
	if os.Getenv("DP2O_FIXTURES") != "" {
		t.Log("lpips_plus.json belongs to the repository's testdata, not to $DP2O_FIXTURES: reading testdata")
	}
	raw, err := os.ReadFile(filepath.Join("testdata", "lpips_plus.json"))
	if err != nil {
		t.Fatal(err)
	}
	var ref struct {
		Source string `json:"source"`
		Cases  []struct {
			Folder, Metric, Dist, Ref string
			Score                     float64
		} `json:"cases"`
	}
	if err := json.Unmarshal(raw, &ref); err != nil {
		t.Fatal(err)
	}
	t.Setenv("DP2O_FIXTURES", "")
	testutil.NoLeak(t)
	opened := map[string]reward.Scorer{}
	defer func() {
		for _, s := range opened {
			s.Close()
		}
	}()
	for _, c := range ref.Cases {
		f := iqatest.Load(t, c.Folder)
		s, ok := opened[c.Metric]
		if !ok {
			if s, err = reward.Open(c.Metric, reward.OpenOptions{Source: f.Weights(t), Device: testutil.Device(t)}); err != nil {
				t.Fatal(err)
			}
			opened[c.Metric] = s
		}
		images := f.Images(t)
		sc := torch.NewScope()
		got, err := s.Score(context.Background(), onDevice(t, images[c.Dist]), onDevice(t, images[c.Ref]))
		sc.Close()
		if err != nil {
			t.Fatal(err)
		}
		if d := abs(got[0] - c.Score); d > iqatest.RelTol*abs(c.Score)+iqatest.ScoreAbsTol {
			t.Errorf("%s %s/%s = %.9g, pyiqa %.9g", c.Metric, c.Dist, c.Ref, got[0], c.Score)
		}
		t.Logf("%s %s/%s = %.9g, pyiqa %.9g (%s)", c.Metric, c.Dist, c.Ref, got[0], c.Score, ref.Source)
	}
}

// TestBadInput: a pair of different sizes, values outside [0,1], an image
// too small for AlexNet's pooling, a cancelled context, a closed scorer
// and missing weights are errors, not panics.
func TestBadInput(t *testing.T) {
	fx := load(t, folders[0])
	testutil.NoLeak(t)
	ctx := context.Background()
	s := torch.NewScope()
	defer s.Close()
	var small, big *torch.Tensor
	for _, x := range fx.images {
		if small == nil || x.Size(2)*x.Size(3) < small.Size(2)*small.Size(3) {
			small = x
		}
		if big == nil || x.Size(2)*x.Size(3) > big.Size(2)*big.Size(3) {
			big = x
		}
	}
	if fmt.Sprint(small.Shape()) == fmt.Sprint(big.Shape()) {
		// A fixture set whose inputs share one size: a crop of it.
		small = big.Narrow(2, 0, big.Size(2)-1)
	}
	sc := fx.scorer
	if _, err := sc.Score(ctx, small, big); err == nil || !strings.Contains(err.Error(), "differ in size") {
		t.Errorf("mismatched sizes: err = %v", err)
	}
	if _, err := sc.Score(ctx, big.MulScalar(3), big); err == nil || !strings.Contains(err.Error(), "[0,1]") {
		t.Errorf("out of range: err = %v", err)
	}
	tiny := big.Narrow(2, 0, 16).Narrow(3, 0, 16)
	if _, err := sc.Score(ctx, tiny, tiny); err == nil {
		t.Error("16×16 image: no error")
	} else {
		t.Logf("16×16 image: %v", err)
	}
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := sc.Score(cctx, big, big); !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled: err = %v", err)
	}
	if _, err := reward.Open(fx.f.PyiqaName, reward.OpenOptions{}); err == nil || !strings.Contains(err.Error(), "weights") {
		t.Errorf("no weights: err = %v", err)
	}
	if _, err := reward.Open(fx.f.PyiqaName, reward.OpenOptions{Weights: filepath.Join(t.TempDir(), "missing")}); err == nil {
		t.Error("missing weights folder: no error")
	}
	other, err := reward.Open(fx.f.PyiqaName, reward.OpenOptions{Source: fx.weights})
	if err != nil {
		t.Fatal(err)
	}
	other.Close()
	if _, err := other.Score(ctx, big, big); err == nil || !strings.Contains(err.Error(), "closed") {
		t.Errorf("closed scorer: err = %v", err)
	}
}
