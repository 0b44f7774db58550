package reward

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"

	"github.com/dp2osr/dp2o/torch"
)

// Metric describes one metric of a hybrid reward: its name, whether it is
// full-reference (FR half) or no-reference (NR half), and its direction.
// In JSON it is {"name", "kind": "fr"|"nr", "higher_is_better"}, the
// layout of the preference fixture's metric list.
type Metric struct {
	Name           string
	FullReference  bool
	HigherIsBetter bool
}

type metricJSON struct {
	Name           string `json:"name"`
	Kind           string `json:"kind"`
	HigherIsBetter *bool  `json:"higher_is_better"`
}

// MarshalJSON writes {"name", "kind", "higher_is_better"}.
func (m Metric) MarshalJSON() ([]byte, error) {
	kind := "nr"
	if m.FullReference {
		kind = "fr"
	}
	hib := m.HigherIsBetter
	return json.Marshal(metricJSON{Name: m.Name, Kind: kind, HigherIsBetter: &hib})
}

// UnmarshalJSON reads {"name", "kind": "fr"|"nr", "higher_is_better"}; kind
// and higher_is_better are required.
func (m *Metric) UnmarshalJSON(b []byte) error {
	var j metricJSON
	if err := json.Unmarshal(b, &j); err != nil {
		return err
	}
	if j.Kind != "fr" && j.Kind != "nr" {
		return fmt.Errorf("reward: metric %q: kind %q, want fr or nr", j.Name, j.Kind)
	}
	if j.HigherIsBetter == nil {
		return fmt.Errorf("reward: metric %q: higher_is_better missing", j.Name)
	}
	*m = Metric{Name: j.Name, FullReference: j.Kind == "fr", HigherIsBetter: *j.HigherIsBetter}
	return nil
}

// MetricOf describes an open scorer.
func MetricOf(s Scorer) Metric {
	return Metric{Name: s.Name(), FullReference: s.FullReference(), HigherIsBetter: s.HigherIsBetter()}
}

// The metric sets of DP²O-SR's reward (SPEC §4; pyiqa's names).
var (
	// DefaultFR is the full-reference half: LPIPS, TOPIQ-FR, A-FINE (FR).
	DefaultFR = []string{"lpips", "topiq_fr", "afine_fr"}
	// DefaultNR is the no-reference half: MANIQA, MUSIQ, CLIP-IQA+,
	// TOPIQ-NR, A-FINE (NR), Q-Align.
	DefaultNR = []string{"maniqa", "musiq", "clipiqa+", "topiq_nr", "afine_nr", "qalign"}
)

// DegenerateScore is the normalised score of every candidate of a group on
// a metric whose scores are all equal (max = min), where min-max
// normalisation is undefined (the preference fixture's rule).
const DegenerateScore = 0.5

// Normalize min-max normalises each metric over the candidates of one
// group: raw[m][k] is metric k's score of candidate m in the metric's own
// units. Lower-is-better metrics are turned around first (multiplied by
// −1), so that 1 is the best candidate of the group and 0 the worst on
// every metric; a metric with max = min gives DegenerateScore to all.
func Normalize(raw [][]float64, metrics []Metric) ([][]float64, error) {
	if err := checkRaw(raw, metrics); err != nil {
		return nil, err
	}
	out := make([][]float64, len(raw))
	for m := range raw {
		out[m] = make([]float64, len(metrics))
	}
	for k, met := range metrics {
		sign := 1.0
		if !met.HigherIsBetter {
			sign = -1
		}
		lo, hi := math.Inf(1), math.Inf(-1)
		for m := range raw {
			v := sign * raw[m][k]
			lo, hi = math.Min(lo, v), math.Max(hi, v)
		}
		for m := range raw {
			if hi == lo {
				out[m][k] = DegenerateScore
				continue
			}
			out[m][k] = (sign*raw[m][k] - lo) / (hi - lo)
		}
	}
	return out, nil
}

// Combine is the hybrid reward of each candidate from its normalised
// scores: R = 0.5·mean(FR metrics) + 0.5·mean(NR metrics) — the two halves
// weigh the same whatever their sizes. With only one kind of metric, R is
// that kind's mean.
func Combine(norm [][]float64, metrics []Metric) ([]float64, error) {
	if err := checkRaw(norm, metrics); err != nil {
		return nil, err
	}
	var nFR, nNR int
	for _, m := range metrics {
		if m.FullReference {
			nFR++
		} else {
			nNR++
		}
	}
	r := make([]float64, len(norm))
	for m, row := range norm {
		var fr, nr float64
		for k, met := range metrics {
			if met.FullReference {
				fr += row[k]
			} else {
				nr += row[k]
			}
		}
		switch {
		case nFR == 0:
			r[m] = nr / float64(nNR)
		case nNR == 0:
			r[m] = fr / float64(nFR)
		default:
			r[m] = 0.5*(fr/float64(nFR)) + 0.5*(nr/float64(nNR))
		}
	}
	return r, nil
}

// GroupReward normalises raw scores over one group and combines them.
func GroupReward(raw [][]float64, metrics []Metric) (norm [][]float64, r []float64, err error) {
	if norm, err = Normalize(raw, metrics); err != nil {
		return nil, nil, err
	}
	r, err = Combine(norm, metrics)
	return norm, r, err
}

func checkRaw(raw [][]float64, metrics []Metric) error {
	if len(metrics) == 0 {
		return errors.New("reward: no metrics")
	}
	if len(raw) == 0 {
		return errors.New("reward: no candidates")
	}
	for m, row := range raw {
		if len(row) != len(metrics) {
			return fmt.Errorf("reward: candidate %d has %d scores for %d metrics", m, len(row), len(metrics))
		}
		for k, v := range row {
			if math.IsNaN(v) || math.IsInf(v, 0) {
				return fmt.Errorf("reward: candidate %d: metric %s scored %v", m, metrics[k].Name, v)
			}
		}
	}
	return nil
}

// Hybrid scores groups of candidates with a set of metrics and turns the
// scores into DP²O-SR's hybrid reward.
type Hybrid struct {
	Scorers []Scorer
	// BatchSize bounds how many candidates one Score call gets (0: all).
	BatchSize int
}

// OpenHybrid opens the named metrics (e.g. DefaultFR followed by
// DefaultNR); opts gives each metric's options. On error the scorers
// opened so far are closed.
func OpenHybrid(names []string, opts func(name string) OpenOptions) (*Hybrid, error) {
	h := &Hybrid{}
	for _, n := range names {
		var o OpenOptions
		if opts != nil {
			o = opts(n)
		}
		s, err := Open(n, o)
		if err != nil {
			h.Close()
			return nil, err
		}
		h.Scorers = append(h.Scorers, s)
	}
	return h, nil
}

// Metrics describes the scorers, in order.
func (h *Hybrid) Metrics() []Metric {
	ms := make([]Metric, len(h.Scorers))
	for i, s := range h.Scorers {
		ms[i] = MetricOf(s)
	}
	return ms
}

// Raw scores the M candidates of one group (M,3,H,W) with every metric:
// raw[m][k]. ref is the group's reference, (1,3,H,W) or (M,3,H,W), needed
// when a metric is full-reference (nil otherwise); a single reference is
// expanded over the batch without copying.
func (h *Hybrid) Raw(ctx context.Context, cands, ref *torch.Tensor) (raw [][]float64, err error) {
	if len(h.Scorers) == 0 {
		return nil, errors.New("reward: hybrid without metrics")
	}
	if cands == nil || cands.Closed() || cands.Dim() != 4 || cands.Size(0) < 1 {
		return nil, errors.New("reward: candidates must be a (M,3,H,W) tensor")
	}
	m := cands.Size(0)
	raw = make([][]float64, m)
	for i := range raw {
		raw[i] = make([]float64, len(h.Scorers))
	}
	bs := int64(h.BatchSize)
	if bs <= 0 || bs > m {
		bs = m
	}
	for k, s := range h.Scorers {
		for start := int64(0); start < m; start += bs {
			n := min(bs, m-start)
			scores, err := h.scoreBatch(ctx, s, cands, ref, start, n)
			if err != nil {
				return nil, err
			}
			if int64(len(scores)) != n {
				return nil, fmt.Errorf("reward: %s returned %d scores for %d images", s.Name(), len(scores), n)
			}
			for i, v := range scores {
				raw[start+int64(i)][k] = v
			}
		}
	}
	return raw, nil
}

// scoreBatch scores candidates [start, start+n) with s.
func (h *Hybrid) scoreBatch(ctx context.Context, s Scorer, cands, ref *torch.Tensor, start, n int64) ([]float64, error) {
	m := cands.Size(0)
	if s.FullReference() {
		switch {
		case ref == nil || ref.Closed():
			return nil, fmt.Errorf("reward: metric %s needs the reference image", s.Name())
		case ref.Dim() != 4 || (ref.Size(0) != 1 && ref.Size(0) != m):
			return nil, fmt.Errorf("reward: reference %v for %d candidates: want (1,3,H,W) or (%d,3,H,W)", ref.Shape(), m, m)
		}
	}
	sc := torch.NewScope()
	defer sc.Close()
	var img, r *torch.Tensor
	if err := torch.Try(func() {
		img = cands.Narrow(0, start, n)
		if !s.FullReference() {
			return
		}
		if ref.Size(0) == 1 {
			sh := ref.Shape()
			r = ref.Expand([]int64{n, sh[1], sh[2], sh[3]})
		} else {
			r = ref.Narrow(0, start, n)
		}
	}); err != nil {
		return nil, err
	}
	return s.Score(ctx, img, r)
}

// Group scores the candidates of one group and returns the raw scores, the
// normalised ones and the hybrid reward of each candidate.
func (h *Hybrid) Group(ctx context.Context, cands, ref *torch.Tensor) (raw, norm [][]float64, r []float64, err error) {
	if raw, err = h.Raw(ctx, cands, ref); err != nil {
		return nil, nil, nil, err
	}
	norm, r, err = GroupReward(raw, h.Metrics())
	return raw, norm, r, err
}

// Close closes every scorer.
func (h *Hybrid) Close() error {
	var errs []error
	for _, s := range h.Scorers {
		errs = append(errs, s.Close())
	}
	h.Scorers = nil
	return errors.Join(errs...)
}
