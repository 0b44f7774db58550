package label

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/dp2osr/dp2o/preference"
	"github.com/dp2osr/dp2o/preference/sample"
	"github.com/dp2osr/dp2o/reward"
	"github.com/dp2osr/dp2o/torch"
)

// ScoresFile is the score log in a candidate folder. Shard i of n logs to
// ShardScoresFile(i, n) instead; every reader takes all the logs together.
const ScoresFile = "scores.jsonl"

// ShardScoresFile is the score log of shard i of n.
func ShardScoresFile(i, n int) string { return sample.ShardFile("scores", i, n) }

// readScoreLogs calls fn with each line of dir's score logs (none yet:
// none): ScoresFile first, then the shard logs by name.
func readScoreLogs(dir string, fn func(line []byte) error) error {
	shards, err := sample.ShardFiles(dir, "scores")
	if err != nil {
		return fmt.Errorf("label: %w", err)
	}
	for _, path := range append([]string{filepath.Join(dir, ScoresFile)}, shards...) {
		err := sample.ReadJSONL(path, func(_ int, b []byte) error { return fn(b) })
		if err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("label: %w", err)
		}
	}
	return nil
}

// LabelsFile is the default name of the labels file in a candidate folder.
const LabelsFile = "labels.json"

// LabelsFormat names the labels layout.
const LabelsFormat = "dp2o-labels/1"

// Score is one line of the score log: one metric on the M candidates of
// one input.
type Score struct {
	Input          string    `json:"input"`
	Metric         string    `json:"metric"`
	FullReference  bool      `json:"full_reference"`
	HigherIsBetter bool      `json:"higher_is_better"`
	SHA256         []string  `json:"sha256"` // of the candidate files scored, in index order
	Scores         []float64 `json:"scores"` // raw, in the metric's units, in index order
}

// Job is a labelling run over one candidate folder.
type Job struct {
	Dir     string   // the candidate folder (with its merged manifest.jsonl)
	Metrics []string // metric names (reward.Open's)
	// Open opens a metric (nil: reward.Open with zero options: the CPU, no weights).
	Open func(name string) (reward.Scorer, error)
	// Device is where candidate images are sent for scoring (the scorers' device).
	Device torch.Device
	// BatchSize bounds the candidates of one Score call (0: a whole group).
	BatchSize int
	// Progress, when set, is called after each (input, metric) with the
	// number done and the total.
	Progress func(done, total int)
	// Shard and NumShards split the inputs among processes by a hash of
	// their id (sample.ShardOf, as the sample step splits them): this run
	// scores shard Shard of NumShards (0 and 0 or 1: every input) and logs
	// to ShardScoresFile. Build reads every shard's log.
	Shard, NumShards int
}

// Summary says what a run did.
type Summary struct {
	Inputs, Metrics  int
	Existing, Scored int // (input, metric) pairs found done / scored now
}

type key struct{ input, metric string }

// Run scores every candidate of the folder with every metric of the job
// that is not scored yet. A candidate whose file no longer has the SHA-256
// of the manifest, a score line computed from other files, an unreadable
// image or an HR of another size than the candidates are errors naming
// them.
func Run(ctx context.Context, j Job) (sum Summary, err error) {
	if len(j.Metrics) == 0 {
		return sum, errors.New("label: no metrics")
	}
	if err := checkNames(j.Metrics); err != nil {
		return sum, err
	}
	recs, err := sample.ReadManifest(j.Dir)
	if err != nil {
		return sum, fmt.Errorf("label: %w (run the sample step, and its merge, first)", err)
	}
	ids, groups := sample.Groups(recs)
	if len(ids) == 0 {
		return sum, fmt.Errorf("label: %s: the manifest lists no candidates", j.Dir)
	}
	logFile := ScoresFile
	if j.NumShards > 1 || j.Shard != 0 {
		if j.Shard < 0 || j.Shard >= j.NumShards {
			return sum, fmt.Errorf("label: shard %d of %d: want 0 ≤ shard < shards", j.Shard, j.NumShards)
		}
		var mine []string
		for _, id := range ids {
			if sample.ShardOf(id, j.NumShards) == j.Shard {
				mine = append(mine, id)
			}
		}
		ids = mine
		logFile = ShardScoresFile(j.Shard, j.NumShards)
	}
	log, err := sample.OpenJSONL(filepath.Join(j.Dir, logFile))
	if err != nil {
		return sum, fmt.Errorf("label: %w", err)
	}
	defer log.Close()
	have, err := ReadScores(j.Dir)
	if err != nil {
		return sum, err
	}
	sum.Inputs, sum.Metrics = len(ids), len(j.Metrics)
	total := len(ids) * len(j.Metrics)
	var todo []key
	for _, id := range ids {
		for _, m := range j.Metrics {
			s, ok := have[key{id, m}]
			if !ok {
				todo = append(todo, key{id, m})
				continue
			}
			if err := matches(s, groups[id]); err != nil {
				return sum, err
			}
			sum.Existing++
		}
	}
	progress := func() {
		if j.Progress != nil {
			j.Progress(sum.Existing+sum.Scored, total)
		}
	}
	progress()
	if len(todo) == 0 {
		return sum, nil
	}

	scorers := map[string]reward.Scorer{}
	defer func() {
		for _, s := range scorers {
			s.Close()
		}
	}()
	open := j.Open
	if open == nil {
		open = func(name string) (reward.Scorer, error) { return reward.Open(name, reward.OpenOptions{}) }
	}
	var cur *groupImages
	defer func() { cur.Close() }()
	for _, k := range todo {
		if err := ctx.Err(); err != nil {
			return sum, fmt.Errorf("label: %w", err)
		}
		s, ok := scorers[k.metric]
		if !ok {
			if s, err = open(k.metric); err != nil {
				return sum, fmt.Errorf("label: %w", err)
			}
			scorers[k.metric] = s
		}
		if cur == nil || cur.id != k.input {
			cur.Close()
			if cur, err = loadGroup(j.Dir, k.input, groups[k.input], j.Device); err != nil {
				return sum, err
			}
		}
		if s.FullReference() && cur.ref == nil {
			return sum, fmt.Errorf("label: metric %s is full-reference but input %s has no HR image (give the HR folder when sampling)", k.metric, k.input)
		}
		h := reward.Hybrid{Scorers: []reward.Scorer{s}, BatchSize: j.BatchSize}
		var ref *torch.Tensor
		if s.FullReference() {
			ref = cur.ref
		}
		raw, err := h.Raw(ctx, cur.cands, ref)
		if err != nil {
			return sum, fmt.Errorf("label: input %s: %w", k.input, err)
		}
		sc := Score{Input: k.input, Metric: k.metric, FullReference: s.FullReference(), HigherIsBetter: s.HigherIsBetter(), SHA256: cur.sums}
		for _, row := range raw {
			sc.Scores = append(sc.Scores, row[0])
		}
		if err := log.Append(sc); err != nil {
			return sum, fmt.Errorf("label: %w", err)
		}
		sum.Scored++
		progress()
	}
	return sum, nil
}

// checkNames refuses empty and repeated metric names.
func checkNames(names []string) error {
	seen := map[string]bool{}
	for _, n := range names {
		if n == "" {
			return errors.New("label: empty metric name")
		}
		if seen[n] {
			return fmt.Errorf("label: metric %s listed twice", n)
		}
		seen[n] = true
	}
	return nil
}

// matches checks that a score line was computed from the manifest's files.
func matches(s Score, recs []sample.Record) error {
	if len(s.Scores) != len(recs) || len(s.SHA256) != len(recs) {
		return fmt.Errorf("label: %s: %s has %d scores for %d candidates: the candidate set changed since it was scored", s.Input, s.Metric, len(s.Scores), len(recs))
	}
	for i, r := range recs {
		if s.SHA256[i] != r.SHA256 {
			return fmt.Errorf("label: %s: %s was scored on other files than candidate %d (%s) now holds: the candidate set changed since it was scored", s.Input, s.Metric, i, r.File)
		}
	}
	return nil
}

// scoredOrder lists the metrics of dir's score log in the order they
// first appear.
func scoredOrder(dir string) ([]string, error) {
	var names []string
	seen := map[string]bool{}
	err := readScoreLogs(dir, func(b []byte) error {
		var s struct {
			Metric string `json:"metric"`
		}
		if err := json.Unmarshal(b, &s); err != nil {
			return err
		}
		if !seen[s.Metric] {
			seen[s.Metric] = true
			names = append(names, s.Metric)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return names, nil
}

// ReadScores reads a folder's score logs, ScoresFile and every shard's
// (none yet: empty). A line that repeats an (input, metric) replaces the
// earlier one (the shard logs are read after ScoresFile, by name).
func ReadScores(dir string) (map[key]Score, error) {
	out := map[key]Score{}
	err := readScoreLogs(dir, func(b []byte) error {
		var s Score
		if err := json.Unmarshal(b, &s); err != nil {
			return err
		}
		out[key{s.Input, s.Metric}] = s
		return nil
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// Metric is a metric of the labels file, as examples/pairs reads it.
type Metric struct {
	Name           string `json:"name"`
	Kind           string `json:"kind"` // "fr" or "nr"
	HigherIsBetter bool   `json:"higher_is_better"`
}

// Labels is the reward labels of a candidate set: the metrics and, per
// input, its candidates with their raw scores and hybrid rewards.
type Labels struct {
	Format  string             `json:"format"`
	Metrics []Metric           `json:"metrics"`
	Groups  []preference.Group `json:"groups"`
}

// RewardMetrics is the metric list in package reward's form.
func (l *Labels) RewardMetrics() []reward.Metric {
	ms := make([]reward.Metric, len(l.Metrics))
	for i, m := range l.Metrics {
		ms[i] = reward.Metric{Name: m.Name, FullReference: m.Kind == "fr", HigherIsBetter: m.HigherIsBetter}
	}
	return ms
}

// Build gathers the scores of metrics (in that order) for every input of
// the folder's manifest and computes each group's hybrid reward. Candidate,
// LR and HR files are given as absolute paths (candidates: dir joined with
// the manifest's relative paths), so that the labels and the pair file
// made from them can be read from any folder. A
// metric not scored for some input is an error naming them.
func Build(dir string, metrics []string) (*Labels, error) {
	if len(metrics) == 0 {
		return nil, errors.New("label: no metrics")
	}
	if err := checkNames(metrics); err != nil {
		return nil, err
	}
	recs, err := sample.ReadManifest(dir)
	if err != nil {
		return nil, fmt.Errorf("label: %w", err)
	}
	ids, groups := sample.Groups(recs)
	scores, err := ReadScores(dir)
	if err != nil {
		return nil, err
	}
	l := &Labels{Format: LabelsFormat}
	var missing []string
	for _, name := range metrics {
		found := false
		for _, id := range ids {
			s, ok := scores[key{id, name}]
			if !ok {
				missing = append(missing, id+"/"+name)
				continue
			}
			if !found {
				kind := "nr"
				if s.FullReference {
					kind = "fr"
				}
				l.Metrics = append(l.Metrics, Metric{Name: name, Kind: kind, HigherIsBetter: s.HigherIsBetter})
				found = true
			}
		}
		if !found && len(ids) > 0 {
			l.Metrics = append(l.Metrics, Metric{Name: name})
		}
	}
	if len(missing) > 0 {
		return nil, fmt.Errorf("label: %d (input, metric) pairs are not scored yet (run the label step with these metrics): %v", len(missing), preview(missing))
	}
	rm := l.RewardMetrics()
	for _, id := range ids {
		rs := groups[id]
		g := preference.Group{ID: id, LR: abs(rs[0].LR), HR: abs(rs[0].HR), Prompt: rs[0].Prompt}
		for _, r := range rs {
			g.Candidates = append(g.Candidates, abs(filepath.Join(dir, r.File)))
		}
		g.Raw = make([][]float64, len(rs))
		for m := range rs {
			g.Raw[m] = make([]float64, len(metrics))
		}
		for k, name := range metrics {
			s := scores[key{id, name}]
			if err := matches(s, rs); err != nil {
				return nil, err
			}
			if s.HigherIsBetter != l.Metrics[k].HigherIsBetter || s.FullReference != (l.Metrics[k].Kind == "fr") {
				return nil, fmt.Errorf("label: metric %s has another direction or kind for input %s than for the others", name, id)
			}
			for m, v := range s.Scores {
				g.Raw[m][k] = v
			}
		}
		if len(rs) > 1 {
			_, r, err := reward.GroupReward(g.Raw, rm)
			if err != nil {
				return nil, fmt.Errorf("label: input %s: %w", id, err)
			}
			g.Reward = r
		}
		l.Groups = append(l.Groups, g)
	}
	return l, nil
}

// abs makes a path absolute (the pair file and training read the labels'
// paths from other folders); "" stays "".
func abs(p string) string {
	if p == "" {
		return ""
	}
	if a, err := filepath.Abs(p); err == nil {
		return a
	}
	return p
}

// Save writes the labels as indented JSON, atomically.
func (l *Labels) Save(path string) error {
	b, err := json.MarshalIndent(l, "", " ")
	if err != nil {
		return fmt.Errorf("label: %w", err)
	}
	return preference.WriteFileAtomic(path, append(b, '\n'))
}

// Load reads a labels file.
func Load(path string) (*Labels, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("label: %w", err)
	}
	var l Labels
	if err := json.Unmarshal(b, &l); err != nil {
		return nil, fmt.Errorf("label: %s: %w", path, err)
	}
	if l.Format != LabelsFormat {
		return nil, fmt.Errorf("label: %s: format %q, want %q", path, l.Format, LabelsFormat)
	}
	return &l, nil
}
