package preference

import (
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"

	"github.com/dp2osr/dp2o/reward"
)

// PairFormat names the pair file layout that Save writes and LoadPairs reads.
const PairFormat = "dp2o-pairs/1"

// Group is one LR input and its M candidates: where they are, and either
// their hybrid rewards or the raw metric scores the rewards are computed
// from (per-group min-max, SPEC §4; reward.GroupReward).
type Group struct {
	ID         string   `json:"id"`               // e.g. the LR file's base name
	LR         string   `json:"lr,omitempty"`     // the LR (control) image
	HR         string   `json:"hr,omitempty"`     // its HR image
	Prompt     string   `json:"prompt,omitempty"` // the tag prompt shared by the group's pairs
	Candidates []string `json:"candidates"`       // M candidate images, in candidate order
	// Raw[m][k] is metric k's raw score of candidate m (optional when
	// Reward is given).
	Raw [][]float64 `json:"raw,omitempty"`
	// Reward[m] is the hybrid reward of candidate m; computed from Raw when empty.
	Reward []float64 `json:"reward"`
	// Filled by BuildPairs.
	Top     []int   `json:"top"`      // the N best candidates, best first
	Bottom  []int   `json:"bottom"`   // the N worst, in ranking order (worst last)
	GapMean float64 `json:"gap_mean"` // μ_gap: mean |R_w − R_l| over the group's N² pairs
	Sigma   float64 `json:"sigma"`    // population std of the group's rewards
	WInter  float64 `json:"w_inter"`  // σ_g + (1 − μ_σ)
}

// Pair is one preference pair of the pair file.
type Pair struct {
	Group  int     `json:"group"`  // index into PairFile.Groups
	Winner int     `json:"winner"` // candidate index (top N)
	Loser  int     `json:"loser"`  // candidate index (bottom N)
	WIntra float64 `json:"w_intra"`
	Weight float64 `json:"weight"` // the HPO weight w_intra·w_inter
}

// PairFile is what preference-pair construction hands to training: the
// groups with their rewards and rankings, and every (winner, loser) pair
// with its HPO weight. Save writes it as JSON (see the package doc).
type PairFile struct {
	Format             string          `json:"format"`
	Metrics            []reward.Metric `json:"metrics,omitempty"`
	MetricKinds        []string        `json:"metric_kinds,omitempty"` // "fr" or "nr", one per metric
	CandidatesPerGroup int             `json:"candidates_per_group"`
	TopN               int             `json:"top_n"`
	MuSigma            float64         `json:"mu_sigma"` // mean σ_g over every group of the set
	Groups             []Group         `json:"groups"`
	Pairs              []Pair          `json:"pairs"`
}

// BuildPairs ranks the candidates of every group by reward (computing the
// rewards from the raw scores with metrics where a group has none), keeps
// the top n and bottom n, pairs them all (n² pairs per group: groups in
// order, winners outer, losers inner) and weights each pair
// w = w_intra·w_inter (SPEC §5–§6; reward.SelectPairs). σ and μ_σ run over
// the whole set, so build the file from every group at once. Every group
// must have the same number of candidates M ≥ 2n.
func BuildPairs(groups []Group, metrics []reward.Metric, n int) (*PairFile, error) {
	if len(groups) == 0 {
		return nil, errors.New("preference: no groups")
	}
	pf := &PairFile{Format: PairFormat, TopN: n, Metrics: metrics}
	for _, m := range metrics {
		k := "nr"
		if m.FullReference {
			k = "fr"
		}
		pf.MetricKinds = append(pf.MetricKinds, k)
	}
	rewards := make([][]float64, len(groups))
	for g := range groups {
		gr := groups[g] // copy; slices are re-made below
		if len(gr.Reward) == 0 {
			if len(gr.Raw) == 0 {
				return nil, fmt.Errorf("preference: group %d (%s): neither rewards nor raw scores", g, gr.ID)
			}
			if len(metrics) == 0 {
				return nil, fmt.Errorf("preference: group %d (%s): raw scores but no metric list", g, gr.ID)
			}
			_, r, err := reward.GroupReward(gr.Raw, metrics)
			if err != nil {
				return nil, fmt.Errorf("preference: group %d (%s): %w", g, gr.ID, err)
			}
			gr.Reward = r
		} else {
			gr.Reward = append([]float64(nil), gr.Reward...)
		}
		for m, v := range gr.Reward {
			if math.IsNaN(v) || math.IsInf(v, 0) {
				return nil, fmt.Errorf("preference: group %d (%s): candidate %d has reward %v", g, gr.ID, m, v)
			}
		}
		if g == 0 {
			pf.CandidatesPerGroup = len(gr.Reward)
		} else if len(gr.Reward) != pf.CandidatesPerGroup {
			return nil, fmt.Errorf("preference: group %d (%s) has %d candidates, group 0 has %d", g, gr.ID, len(gr.Reward), pf.CandidatesPerGroup)
		}
		if len(gr.Candidates) != 0 && len(gr.Candidates) != len(gr.Reward) {
			return nil, fmt.Errorf("preference: group %d (%s): %d candidate files for %d rewards", g, gr.ID, len(gr.Candidates), len(gr.Reward))
		}
		if len(gr.Raw) != 0 && len(gr.Raw) != len(gr.Reward) {
			return nil, fmt.Errorf("preference: group %d (%s): %d raw score rows for %d rewards", g, gr.ID, len(gr.Raw), len(gr.Reward))
		}
		rewards[g] = gr.Reward
		pf.Groups = append(pf.Groups, gr)
	}
	sel, err := reward.SelectPairs(rewards, n)
	if err != nil {
		return nil, fmt.Errorf("preference: %w", err)
	}
	pf.MuSigma = sel.MuSigma
	for g := range pf.Groups {
		gr := &pf.Groups[g]
		gr.Top, gr.Bottom = sel.Top[g], sel.Bottom[g]
		gr.GapMean, gr.Sigma, gr.WInter = sel.GapMeans[g], sel.Sigma[g], sel.WInter[g]
	}
	for _, p := range sel.Pairs {
		pf.Pairs = append(pf.Pairs, Pair{Group: p.Group, Winner: p.Winner, Loser: p.Loser, WIntra: p.WIntra, Weight: p.Weight})
	}
	return pf, nil
}

// Validate checks that the file is consistent: format, indices in range,
// pairs drawn from each group's top and bottom, finite weights.
func (pf *PairFile) Validate() error {
	if pf.Format != PairFormat {
		return fmt.Errorf("preference: pair file format %q, want %q", pf.Format, PairFormat)
	}
	if len(pf.Groups) == 0 {
		return errors.New("preference: pair file has no groups")
	}
	for g, gr := range pf.Groups {
		if len(gr.Reward) != pf.CandidatesPerGroup {
			return fmt.Errorf("preference: pair file: group %d (%s) has %d rewards, want %d", g, gr.ID, len(gr.Reward), pf.CandidatesPerGroup)
		}
		if len(gr.Top) != pf.TopN || len(gr.Bottom) != pf.TopN {
			return fmt.Errorf("preference: pair file: group %d (%s) has %d/%d top/bottom candidates, want %d", g, gr.ID, len(gr.Top), len(gr.Bottom), pf.TopN)
		}
	}
	for i, p := range pf.Pairs {
		if p.Group < 0 || p.Group >= len(pf.Groups) {
			return fmt.Errorf("preference: pair %d: group %d out of range", i, p.Group)
		}
		gr := pf.Groups[p.Group]
		if !contains(gr.Top, p.Winner) || !contains(gr.Bottom, p.Loser) {
			return fmt.Errorf("preference: pair %d: (%d, %d) is not a top×bottom pair of group %d", i, p.Winner, p.Loser, p.Group)
		}
		if math.IsNaN(p.Weight) || math.IsInf(p.Weight, 0) {
			return fmt.Errorf("preference: pair %d: weight %v", i, p.Weight)
		}
	}
	return nil
}

func contains(s []int, v int) bool {
	for _, x := range s {
		if x == v {
			return true
		}
	}
	return false
}

// Save writes the pair file as indented JSON, atomically: a temporary file
// in the same folder, synced, then renamed over path.
func (pf *PairFile) Save(path string) error {
	if err := pf.Validate(); err != nil {
		return err
	}
	b, err := json.MarshalIndent(pf, "", " ")
	if err != nil {
		return fmt.Errorf("preference: %w", err)
	}
	return WriteFileAtomic(path, append(b, '\n'))
}

// LoadPairs reads and validates a pair file.
func LoadPairs(path string) (*PairFile, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("preference: %w", err)
	}
	var pf PairFile
	if err := json.Unmarshal(b, &pf); err != nil {
		return nil, fmt.Errorf("preference: pair file %s: %w", path, err)
	}
	for k, kind := range pf.MetricKinds {
		if k < len(pf.Metrics) {
			pf.Metrics[k].FullReference = kind == "fr"
		}
	}
	if err := pf.Validate(); err != nil {
		return nil, fmt.Errorf("%w (in %s)", err, path)
	}
	return &pf, nil
}

// WriteFileAtomic writes data to path through a temporary file in the same
// folder that is synced and renamed, so that path never holds a partial file.
func WriteFileAtomic(path string, data []byte) (err error) {
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return fmt.Errorf("preference: %w", err)
	}
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(f.Name())
		}
	}()
	if _, err = f.Write(data); err != nil {
		return fmt.Errorf("preference: writing %s: %w", path, err)
	}
	if err = f.Sync(); err != nil {
		return fmt.Errorf("preference: writing %s: %w", path, err)
	}
	if err = f.Close(); err != nil {
		return fmt.Errorf("preference: writing %s: %w", path, err)
	}
	if err = os.Rename(f.Name(), path); err != nil {
		return fmt.Errorf("preference: %w", err)
	}
	return nil
}

// PairImages is what training loads for one pair: the two candidate
// images, the group's LR (control) image, HR image and prompt, and the
// pair's HPO weight.
type PairImages struct {
	Winner, Loser  string
	LR, HR, Prompt string
	Weight         float64
}

// Images returns pair i's files and weight, as stored in the file.
func (pf *PairFile) Images(i int) (PairImages, error) {
	if i < 0 || i >= len(pf.Pairs) {
		return PairImages{}, fmt.Errorf("preference: pair %d of %d", i, len(pf.Pairs))
	}
	p := pf.Pairs[i]
	if p.Group < 0 || p.Group >= len(pf.Groups) {
		return PairImages{}, fmt.Errorf("preference: pair %d: group %d out of range", i, p.Group)
	}
	g := pf.Groups[p.Group]
	if p.Winner < 0 || p.Loser < 0 || p.Winner >= len(g.Candidates) || p.Loser >= len(g.Candidates) {
		return PairImages{}, fmt.Errorf("preference: pair %d: group %d (%s) lists %d candidate files", i, p.Group, g.ID, len(g.Candidates))
	}
	return PairImages{Winner: g.Candidates[p.Winner], Loser: g.Candidates[p.Loser], LR: g.LR, HR: g.HR, Prompt: g.Prompt, Weight: p.Weight}, nil
}
