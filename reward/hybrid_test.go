package reward

import (
	"context"
	"encoding/json"
	"math"
	"os"
	"testing"

	"github.com/dp2osr/dp2o/internal/testutil"
	"github.com/dp2osr/dp2o/torch"
)

// pairsFixture is preference/reward_pairs.json.
type pairsFixture struct {
	Metrics    []Metric  `json:"metrics"`
	Groups     int       `json:"groups"`
	Candidates int       `json:"candidates_per_group"`
	TopN       int       `json:"top_n"`
	Top        [][]int   `json:"top"`
	Bottom     [][]int   `json:"bottom"`
	Pairs      [][]int   `json:"pairs"`
	GapMeans   []float64 `json:"gap_means"`
	MuSigma    float64   `json:"mu_sigma"`
}

// pairsTol is the fixture's tolerance (float64, same arithmetic).
const pairsTol = 1e-12

func loadPairs(t *testing.T) (pairsFixture, []Metric, map[string][]float64, map[string][]int64) {
	t.Helper()
	var f pairsFixture
	raw, err := os.ReadFile(testutil.Fixture(t, "preference/reward_pairs.json"))
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(raw, &f); err != nil {
		t.Fatal(err)
	}
	ms := f.Metrics
	// The JSON form round-trips (the fixture's own layout).
	b, err := json.Marshal(ms)
	if err != nil {
		t.Fatal(err)
	}
	var back []Metric
	if err := json.Unmarshal(b, &back); err != nil || len(back) != len(ms) {
		t.Fatalf("round trip: %v", err)
	}
	for i := range ms {
		if back[i] != ms[i] {
			t.Fatalf("round trip: %+v, want %+v", back[i], ms[i])
		}
	}
	if err := json.Unmarshal([]byte(`{"name":"x","kind":"both","higher_is_better":true}`), &back[0]); err == nil {
		t.Error("kind both: no error")
	}
	ts := testutil.Tensors(t, testutil.Fixture(t, "preference/reward_pairs.safetensors"))
	vals := map[string][]float64{}
	shapes := map[string][]int64{}
	for k, x := range ts {
		shapes[k] = x.Shape()
		if k == "pair_index" {
			continue
		}
		vals[k] = x.Float64s()
	}
	ints := ts["pair_index"].Int64s()
	out := make([]float64, len(ints))
	for i, v := range ints {
		out[i] = float64(v)
	}
	vals["pair_index"] = out
	return f, ms, vals, shapes
}

func closeTo(t *testing.T, what string, got, want float64) {
	t.Helper()
	if math.Abs(got-want) > pairsTol {
		t.Fatalf("%s = %.17g, want %.17g", what, got, want)
	}
}

// TestRewardPairs reproduces preference/reward_pairs: per-group min-max
// normalisation (directions aligned, max = min → 0.5), the FR/NR halves,
// the ranking with its tie rule, the top/bottom pairs and their HPO weights.
func TestRewardPairs(t *testing.T) {
	f, ms, v, shapes := loadPairs(t)
	G, M, K := int(shapes["raw_scores"][0]), int(shapes["raw_scores"][1]), int(shapes["raw_scores"][2])
	if G != f.Groups || M != f.Candidates || K != len(ms) {
		t.Fatalf("raw_scores %v vs JSON groups %d, candidates %d, metrics %d", shapes["raw_scores"], f.Groups, f.Candidates, len(ms))
	}
	var rewards [][]float64
	degenerate, ties := 0, 0
	for g := range G {
		raw := make([][]float64, M)
		for m := range M {
			raw[m] = v["raw_scores"][(g*M+m)*K : (g*M+m+1)*K]
		}
		norm, r, err := GroupReward(raw, ms)
		if err != nil {
			t.Fatal(err)
		}
		for m := range M {
			for k := range K {
				closeTo(t, "normalized", norm[m][k], v["normalized"][(g*M+m)*K+k])
			}
			closeTo(t, "reward", r[m], v["reward"][g*M+m])
			for m2 := range m {
				if r[m2] == r[m] {
					ties++
				}
			}
		}
		for k := range K {
			if norm[0][k] == DegenerateScore && raw[0][k] == raw[M-1][k] {
				degenerate++
			}
		}
		rewards = append(rewards, r)
	}
	t.Logf("%d groups × %d candidates × %d metrics; %d constant metric(s), %d tied reward pair(s)", G, M, K, degenerate, ties)

	sel, err := SelectPairs(rewards, f.TopN)
	if err != nil {
		t.Fatal(err)
	}
	for g := range G {
		for i := range f.TopN {
			if sel.Top[g][i] != f.Top[g][i] || sel.Bottom[g][i] != f.Bottom[g][i] {
				t.Fatalf("group %d: top %v bottom %v, want %v %v", g, sel.Top[g], sel.Bottom[g], f.Top[g], f.Bottom[g])
			}
		}
		closeTo(t, "gap_means", sel.GapMeans[g], f.GapMeans[g])
		closeTo(t, "sigma", sel.Sigma[g], v["sigma"][g])
		closeTo(t, "w_inter", sel.WInter[g], v["w_inter"][g])
	}
	closeTo(t, "mu_sigma", sel.MuSigma, f.MuSigma)
	if len(sel.Pairs) != len(f.Pairs) || int64(len(sel.Pairs)) != shapes["pair_index"][0] {
		t.Fatalf("%d pairs, want %d", len(sel.Pairs), len(f.Pairs))
	}
	for i, p := range sel.Pairs {
		want := f.Pairs[i]
		if p.Group != want[0] || p.Winner != want[1] || p.Loser != want[2] {
			t.Fatalf("pair %d = (%d,%d,%d), want %v", i, p.Group, p.Winner, p.Loser, want)
		}
		for j, x := range []int{p.Group, p.Winner, p.Loser} {
			if float64(x) != v["pair_index"][3*i+j] {
				t.Fatalf("pair %d: pair_index differs from the JSON", i)
			}
		}
		closeTo(t, "pair_w_intra", p.WIntra, v["pair_w_intra"][i])
		closeTo(t, "pair_weight", p.Weight, v["pair_weight"][i])
	}
}

// TestNormalizeRules: directions, the degenerate rule, one-sided metric
// sets and bad input.
func TestNormalizeRules(t *testing.T) {
	ms := []Metric{{Name: "lower", FullReference: true}, {Name: "higher", HigherIsBetter: true}}
	raw := [][]float64{{0.2, 5}, {0.4, 5}, {0.3, 7}}
	norm, r, err := GroupReward(raw, ms)
	if err != nil {
		t.Fatal(err)
	}
	// lower-better: 0.2 best (1), 0.4 worst (0); higher-better 7 best.
	if norm[0][0] != 1 || norm[1][0] != 0 || norm[1][1] != 0 || norm[2][1] != 1 {
		t.Fatalf("normalised %v", norm)
	}
	if r[2] != 0.5*norm[2][0]+0.5*norm[2][1] {
		t.Fatalf("reward %v", r)
	}
	same := [][]float64{{1, 2}, {1, 2}}
	norm, _, _ = GroupReward(same, ms)
	if norm[0][0] != DegenerateScore || norm[1][1] != DegenerateScore {
		t.Fatalf("max = min: %v", norm)
	}
	onlyNR := []Metric{{Name: "a", HigherIsBetter: true}, {Name: "b", HigherIsBetter: true}}
	_, r, _ = GroupReward([][]float64{{0, 0}, {1, 1}}, onlyNR)
	if r[0] != 0 || r[1] != 1 {
		t.Fatalf("NR only: %v", r)
	}
	if _, _, err := GroupReward([][]float64{{1}}, ms); err == nil {
		t.Error("short row: no error")
	}
	if _, _, err := GroupReward([][]float64{{math.NaN(), 1}}, ms); err == nil {
		t.Error("NaN: no error")
	}
	if _, _, err := GroupReward(nil, ms); err == nil {
		t.Error("no candidates: no error")
	}
	if _, err := SelectPairs([][]float64{{1, 2, 3}}, 2); err == nil {
		t.Error("2·n > M: no error")
	}
	if got := Rank([]float64{0.5, 0.7, 0.5, 0.7}); got[0] != 1 || got[1] != 3 || got[2] != 0 || got[3] != 2 {
		t.Errorf("Rank ties: %v", got)
	}
}

// meanScorer is a no-reference test metric: the mean intensity.
type meanScorer struct{}

func (meanScorer) Name() string         { return "mean" }
func (meanScorer) FullReference() bool  { return false }
func (meanScorer) HigherIsBetter() bool { return true }
func (meanScorer) Close() error         { return nil }
func (m meanScorer) Score(ctx context.Context, img, _ *torch.Tensor) (out []float64, err error) {
	if err := CheckInputs(ctx, m, img, nil); err != nil {
		return nil, err
	}
	err = torch.Try(func() {
		s := torch.NewScope()
		defer s.Close()
		out = img.MeanDims([]int64{1, 2, 3}, false).To(torch.Float64).Float64s()
	})
	return out, err
}

// TestHybridGroup scores a group (three distortions of one reference) with
// PSNR, SSIM and an NR metric through Hybrid, whole and in batches of 2,
// and checks the raw scores against single-image calls and the reward
// against GroupReward.
func TestHybridGroup(t *testing.T) {
	testutil.NoLeak(t)
	_, imgs := readFidelity(t)
	ctx := context.Background()
	h, err := OpenHybrid([]string{"psnry", "ssim"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	h.Scorers = append(h.Scorers, meanScorer{})
	defer h.Close()
	s := torch.NewScope()
	defer s.Close()
	names := []string{"blur", "jpeg", "noise"}
	var cs []*torch.Tensor
	for _, n := range names {
		cs = append(cs, imgs[n])
	}
	cands := torch.Cat(cs, 0)
	raw, norm, r, err := h.Group(ctx, cands, imgs["ref"])
	if err != nil {
		t.Fatal(err)
	}
	for m, n := range names {
		for k, sc := range h.Scorers {
			var ref *torch.Tensor
			if sc.FullReference() {
				ref = imgs["ref"]
			}
			one, err := sc.Score(ctx, imgs[n], ref)
			if err != nil {
				t.Fatal(err)
			}
			if math.Abs(one[0]-raw[m][k]) > 1e-9*math.Abs(one[0]) {
				t.Errorf("%s %s: group %v, alone %v", n, sc.Name(), raw[m][k], one[0])
			}
		}
	}
	wantNorm, wantR, _ := GroupReward(raw, h.Metrics())
	for m := range r {
		if r[m] != wantR[m] || norm[m][0] != wantNorm[m][0] {
			t.Fatalf("reward %v, want %v", r, wantR)
		}
	}
	h.BatchSize = 2
	raw2, err := h.Raw(ctx, cands, imgs["ref"].Expand([]int64{3, -1, -1, -1}))
	if err != nil {
		t.Fatal(err)
	}
	for m := range raw {
		for k := range raw[m] {
			if math.Abs(raw2[m][k]-raw[m][k]) > 1e-9*math.Abs(raw[m][k]) {
				t.Errorf("batched: %v vs %v", raw2[m], raw[m])
			}
		}
	}
	if _, err := h.Raw(ctx, cands, nil); err == nil {
		t.Error("FR metrics without a reference: no error")
	}
	if _, err := h.Raw(ctx, cands, imgs["odd_ref"]); err == nil {
		t.Error("reference of another size: no error")
	}
	if _, err := OpenHybrid([]string{"psnr", "no-such-metric"}, nil); err == nil {
		t.Error("unknown metric: no error")
	}
}
