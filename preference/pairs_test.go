package preference

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/dp2osr/dp2o/internal/testutil"
	"github.com/dp2osr/dp2o/reward"
	"github.com/dp2osr/dp2o/torch"
)

// tolPairs is fixtures/preference/README.md's tolerance for rewards and weights.
const tolPairs = 1e-12

type rewardPairsFixture struct {
	Metrics []struct {
		Name           string `json:"name"`
		Kind           string `json:"kind"`
		HigherIsBetter bool   `json:"higher_is_better"`
	} `json:"metrics"`
	Groups             int       `json:"groups"`
	CandidatesPerGroup int       `json:"candidates_per_group"`
	TopN               int       `json:"top_n"`
	Top                [][]int   `json:"top"`
	Bottom             [][]int   `json:"bottom"`
	Pairs              [][3]int  `json:"pairs"`
	GapMeans           []float64 `json:"gap_means"`
	MuSigma            float64   `json:"mu_sigma"`
}

func readJSON(t testing.TB, rel string, v any) {
	t.Helper()
	b, err := os.ReadFile(testutil.Fixture(t, rel))
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, v); err != nil {
		t.Fatalf("%s: %v", rel, err)
	}
}

func closeF(t *testing.T, name string, got, want float64) {
	t.Helper()
	if d := got - want; d > tolPairs || d < -tolPairs {
		t.Fatalf("%s = %.17g, want %.17g", name, got, want)
	}
}

// fixtureGroups builds the groups of the reward_pairs fixture from its raw
// scores, with made-up file names (the file layout is not part of the fixture).
func fixtureGroups(t *testing.T) ([]Group, []reward.Metric, rewardPairsFixture, map[string]*torch.Tensor) {
	var fx rewardPairsFixture
	readJSON(t, "preference/reward_pairs.json", &fx)
	ts := testutil.Tensors(t, testutil.Fixture(t, "preference/reward_pairs.safetensors"))
	var metrics []reward.Metric
	for _, m := range fx.Metrics {
		if m.Kind != "fr" && m.Kind != "nr" {
			t.Fatalf("metric %s: kind %q", m.Name, m.Kind)
		}
		metrics = append(metrics, reward.Metric{Name: m.Name, FullReference: m.Kind == "fr", HigherIsBetter: m.HigherIsBetter})
	}
	raw := ts["raw_scores"]
	sh := raw.Shape()
	if len(sh) != 3 || int(sh[0]) != fx.Groups || int(sh[1]) != fx.CandidatesPerGroup || int(sh[2]) != len(metrics) {
		t.Fatalf("raw_scores %v vs %d groups × %d candidates × %d metrics", sh, fx.Groups, fx.CandidatesPerGroup, len(metrics))
	}
	v := raw.Float64s()
	groups := make([]Group, fx.Groups)
	for g := range groups {
		gr := Group{ID: fmt.Sprintf("g%d", g), LR: fmt.Sprintf("lr/g%d.png", g), Prompt: "tags"}
		for m := 0; m < fx.CandidatesPerGroup; m++ {
			row := make([]float64, len(metrics))
			copy(row, v[(g*fx.CandidatesPerGroup+m)*len(metrics):])
			gr.Raw = append(gr.Raw, row)
			gr.Candidates = append(gr.Candidates, fmt.Sprintf("cand/g%d_%02d.png", g, m))
		}
		groups[g] = gr
	}
	return groups, metrics, fx, ts
}

func checkAgainstFixture(t *testing.T, pf *PairFile, fx rewardPairsFixture, ts map[string]*torch.Tensor) {
	t.Helper()
	if pf.TopN != fx.TopN || pf.CandidatesPerGroup != fx.CandidatesPerGroup || len(pf.Groups) != fx.Groups {
		t.Fatalf("file: N %d, M %d, G %d", pf.TopN, pf.CandidatesPerGroup, len(pf.Groups))
	}
	rw, sig, win := ts["reward"].Float64s(), ts["sigma"].Float64s(), ts["w_inter"].Float64s()
	for g, gr := range pf.Groups {
		for m, r := range gr.Reward {
			closeF(t, fmt.Sprintf("reward[%d][%d]", g, m), r, rw[g*fx.CandidatesPerGroup+m])
		}
		if fmt.Sprint(gr.Top) != fmt.Sprint(fx.Top[g]) || fmt.Sprint(gr.Bottom) != fmt.Sprint(fx.Bottom[g]) {
			t.Fatalf("group %d: top %v bottom %v, want %v %v", g, gr.Top, gr.Bottom, fx.Top[g], fx.Bottom[g])
		}
		closeF(t, fmt.Sprintf("gap_mean[%d]", g), gr.GapMean, fx.GapMeans[g])
		closeF(t, fmt.Sprintf("sigma[%d]", g), gr.Sigma, sig[g])
		closeF(t, fmt.Sprintf("w_inter[%d]", g), gr.WInter, win[g])
	}
	closeF(t, "mu_sigma", pf.MuSigma, fx.MuSigma)
	idx := ts["pair_index"].Int64s()
	wi, w := ts["pair_w_intra"].Float64s(), ts["pair_weight"].Float64s()
	if len(pf.Pairs) != len(fx.Pairs) || len(idx) != 3*len(fx.Pairs) {
		t.Fatalf("%d pairs, want %d (pair_index %d entries)", len(pf.Pairs), len(fx.Pairs), len(idx))
	}
	for i, p := range pf.Pairs {
		got := [3]int{p.Group, p.Winner, p.Loser}
		if got != fx.Pairs[i] || int64(got[0]) != idx[3*i] || int64(got[1]) != idx[3*i+1] || int64(got[2]) != idx[3*i+2] {
			t.Fatalf("pair %d = %v, want %v", i, got, fx.Pairs[i])
		}
		closeF(t, fmt.Sprintf("w_intra[%d]", i), p.WIntra, wi[i])
		closeF(t, fmt.Sprintf("weight[%d]", i), p.Weight, w[i])
	}
}

// TestRewardPairsFixture runs the reward_pairs case through BuildPairs
// (raw scores → hybrid rewards → pairs and weights), through a saved and
// reloaded pair file, and from rewards given directly.
func TestRewardPairsFixture(t *testing.T) {
	testutil.NoLeak(t)
	groups, metrics, fx, ts := fixtureGroups(t)
	pf, err := BuildPairs(groups, metrics, fx.TopN)
	if err != nil {
		t.Fatal(err)
	}
	checkAgainstFixture(t, pf, fx, ts)

	path := filepath.Join(t.TempDir(), "pairs.json")
	if err := pf.Save(path); err != nil {
		t.Fatal(err)
	}
	back, err := LoadPairs(path)
	if err != nil {
		t.Fatal(err)
	}
	checkAgainstFixture(t, back, fx, ts)
	for k, m := range back.Metrics {
		if m != metrics[k] {
			t.Fatalf("metric %d reloaded as %+v, want %+v", k, m, metrics[k])
		}
	}
	for i, p := range back.Pairs {
		im, err := back.Images(i)
		if err != nil {
			t.Fatal(err)
		}
		g := groups[p.Group]
		if im.Winner != g.Candidates[p.Winner] || im.Loser != g.Candidates[p.Loser] || im.LR != g.LR || im.Prompt != g.Prompt || im.Weight != p.Weight {
			t.Fatalf("pair %d images %+v", i, im)
		}
	}
	if _, err := back.Images(len(back.Pairs)); err == nil {
		t.Fatal("Images out of range: no error")
	}

	// Rewards given directly (the labelling step's output) give the same file.
	rw := ts["reward"].Float64s()
	direct := make([]Group, len(groups))
	for g := range groups {
		direct[g] = Group{ID: groups[g].ID, Reward: rw[g*fx.CandidatesPerGroup : (g+1)*fx.CandidatesPerGroup]}
	}
	pf2, err := BuildPairs(direct, nil, fx.TopN)
	if err != nil {
		t.Fatal(err)
	}
	checkAgainstFixture(t, pf2, fx, ts)
}

func TestPairsBadInput(t *testing.T) {
	groups, metrics, fx, _ := fixtureGroups(t)
	expect := func(name string, err error, want string) {
		t.Helper()
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Fatalf("%s: error %v, want one mentioning %q", name, err, want)
		}
	}
	_, err := BuildPairs(nil, metrics, fx.TopN)
	expect("no groups", err, "no groups")
	_, err = BuildPairs(groups, metrics, fx.CandidatesPerGroup)
	expect("N too large", err, "top/bottom")
	_, err = BuildPairs(groups, nil, fx.TopN)
	expect("no metrics", err, "metric")
	short := append([]Group(nil), groups...)
	short[1].Raw = short[1].Raw[:len(short[1].Raw)-1]
	short[1].Candidates = short[1].Candidates[:len(short[1].Candidates)-1]
	_, err = BuildPairs(short, metrics, fx.TopN)
	expect("ragged groups", err, "candidates")

	dir := t.TempDir()
	p := filepath.Join(dir, "p.json")
	os.WriteFile(p, []byte(`{"format": "dp2o-pairs/1", "groups": [`), 0o644)
	_, err = LoadPairs(p)
	expect("truncated", err, "unexpected end")
	os.WriteFile(p, []byte(`{"format": "other"}`), 0o644)
	_, err = LoadPairs(p)
	expect("format", err, "format")
	pf, err := BuildPairs(groups, metrics, fx.TopN)
	if err != nil {
		t.Fatal(err)
	}
	pf.Pairs[0].Loser = pf.Groups[0].Top[0]
	expect("bad pair", pf.Save(p), "not a top×bottom pair")
}
