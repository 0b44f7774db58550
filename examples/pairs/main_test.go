package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/dp2osr/dp2o/internal/testutil"
	"github.com/dp2osr/dp2o/preference"
)

func runApp(args ...string) (string, error) {
	app := newApp()
	var out bytes.Buffer
	app.Writer, app.ErrWriter = &out, &out
	err := app.Run(append([]string{"pairs"}, args...))
	return out.String(), err
}

// TestPairsFromFixtureLabels writes the reward_pairs fixture as a labels
// file, runs the program and checks the pair file's rankings, pairs and
// weights against the fixture.
func TestPairsFromFixtureLabels(t *testing.T) {
	var fx struct {
		Metrics            []json.RawMessage `json:"metrics"`
		Groups             int               `json:"groups"`
		CandidatesPerGroup int               `json:"candidates_per_group"`
		TopN               int               `json:"top_n"`
		Top, Bottom        [][]int
		Pairs              [][3]int `json:"pairs"`
	}
	b, err := os.ReadFile(testutil.Fixture(t, "preference/reward_pairs.json"))
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, &fx); err != nil {
		t.Fatal(err)
	}
	ts := testutil.Tensors(t, testutil.Fixture(t, "preference/reward_pairs.safetensors"))
	raw := ts["raw_scores"].Float64s()
	nm := len(fx.Metrics)
	type group struct {
		ID         string      `json:"id"`
		Candidates []string    `json:"candidates"`
		Raw        [][]float64 `json:"raw"`
	}
	in := struct {
		Metrics []json.RawMessage `json:"metrics"`
		Groups  []group           `json:"groups"`
	}{Metrics: fx.Metrics}
	for g := 0; g < fx.Groups; g++ {
		gr := group{ID: fmt.Sprint(g)}
		for m := 0; m < fx.CandidatesPerGroup; m++ {
			gr.Raw = append(gr.Raw, raw[(g*fx.CandidatesPerGroup+m)*nm:(g*fx.CandidatesPerGroup+m+1)*nm])
			gr.Candidates = append(gr.Candidates, fmt.Sprintf("c%d_%d.png", g, m))
		}
		in.Groups = append(in.Groups, gr)
	}
	dir := t.TempDir()
	lp, op := filepath.Join(dir, "labels.json"), filepath.Join(dir, "pairs.json")
	lb, _ := json.Marshal(in)
	os.WriteFile(lp, lb, 0o644)
	msg, err := runApp("--labels", lp, "--top_n", fmt.Sprint(fx.TopN), "--output", op)
	if err != nil {
		t.Fatalf("%v: %s", err, msg)
	}
	pf, err := preference.LoadPairs(op)
	if err != nil {
		t.Fatal(err)
	}
	if len(pf.Pairs) != len(fx.Pairs) {
		t.Fatalf("%d pairs, want %d", len(pf.Pairs), len(fx.Pairs))
	}
	w := ts["pair_weight"].Float64s()
	for i, p := range pf.Pairs {
		if [3]int{p.Group, p.Winner, p.Loser} != fx.Pairs[i] {
			t.Fatalf("pair %d: %+v, want %v", i, p, fx.Pairs[i])
		}
		if d := p.Weight - w[i]; d > 1e-12 || d < -1e-12 {
			t.Fatalf("pair %d weight %v, want %v", i, p.Weight, w[i])
		}
	}
	for g, gr := range pf.Groups {
		if fmt.Sprint(gr.Top) != fmt.Sprint(fx.Top[g]) || fmt.Sprint(gr.Bottom) != fmt.Sprint(fx.Bottom[g]) {
			t.Fatalf("group %d: top %v bottom %v, want %v %v", g, gr.Top, gr.Bottom, fx.Top[g], fx.Bottom[g])
		}
	}
}

func TestPairsBadLabels(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "l.json")
	for _, c := range []struct{ body, want string }{
		{`{"metrics": [`, "unexpected end"},
		{`{"metrics": [{"name": "x", "kind": "both", "higher_is_better": true}], "groups": [{"id": "a", "raw": [[1], [2]]}]}`, "kind"},
		{`{"metrics": [{"name": "x", "kind": "fr"}], "groups": [{"id": "a", "raw": [[1], [2]]}]}`, "higher_is_better"},
		{`{"metrics": [{"name": "x", "kind": "fr", "higher_is_better": true}], "groups": []}`, "no groups"},
	} {
		os.WriteFile(p, []byte(c.body), 0o644)
		if _, err := runApp("--labels", p, "--top_n", "1", "--output", filepath.Join(dir, "o.json")); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: error %v, want %q", c.body, err, c.want)
		}
	}
	os.WriteFile(p, []byte(`{"metrics": [{"name": "x", "kind": "fr", "higher_is_better": true}], "groups": [{"id": "a", "raw": [[1], [2]]}]}`), 0o644)
	if _, err := runApp("--labels", p, "--top_n", "2", "--output", filepath.Join(dir, "o.json")); err == nil || !strings.Contains(err.Error(), "top/bottom") {
		t.Errorf("N too large: %v", err)
	}
}
