package sample

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"io"
	"os"
	"path/filepath"

	"github.com/dp2osr/dp2o/imageio"
	"github.com/dp2osr/dp2o/torch"
)

// Sampler makes candidates: one output image per seed for an LR image and
// its prompt (SD2 and FLUX implement it).
type Sampler interface {
	Name() string
	Candidates(ctx context.Context, lr *imageio.RGB8, prompt string, seeds []uint64) ([]*imageio.RGB8, error)
}

// Job is a candidate-sampling run over a set of inputs.
type Job struct {
	Dir    string  // the candidate folder (created; holds sample.json, manifests, candidates/)
	Config Config  // settings, noise pool, batch size
	Inputs []Input // every input of the set (all shards list the same)
	// Shard and NumShards pick this process's part: input id's shard is
	// FNV-1a(id) mod NumShards (0 ≤ Shard < NumShards; NumShards 0 means 1).
	Shard, NumShards int
	// SkipBadInputs skips an LR image that cannot be read (recording it in
	// the manifest, with a warning to Log) instead of failing.
	SkipBadInputs bool
	// Open loads the model; it is called only when there is work to do.
	Open func() (Sampler, error)
	// Prompt gives an input's prompt when Input.Prompt is empty (nil: empty prompt).
	Prompt func(in Input, lr *imageio.RGB8) (string, error)
	// Progress, when set, is called after each batch with the candidates
	// of this shard done so far (skipped inputs included) and their total.
	Progress func(done, total int)
	Log      io.Writer // warnings (nil: discarded)
}

// Summary says what a run did.
type Summary struct {
	Inputs   int      // inputs of this shard
	Total    int      // their candidates
	Existing int      // found done
	Sampled  int      // sampled now
	Skipped  []string // inputs skipped as unreadable (now or before)
}

// ShardOf is input id's shard of n.
func ShardOf(id string, n int) int {
	if n <= 1 {
		return 0
	}
	h := fnv.New64a()
	h.Write([]byte(id))
	return int(h.Sum64() % uint64(n))
}

// chunk is one batch of candidates of one input: indices [lo, hi).
type chunk struct {
	in     Input
	lo, hi int
}

// Run samples every candidate of this shard that is not done yet. It can
// be killed at any point and run again: candidates are written atomically
// (temporary file, sync, rename) and recorded in the shard's manifest after
// their batch is complete; a batch not recorded is sampled again as a
// whole, so the bytes of every candidate do not depend on where a run
// stopped. A finished shard is left as it is (the model is not even
// loaded). Candidates recorded by any shard's manifest count as done.
func Run(ctx context.Context, j Job) (sum Summary, err error) {
	n := j.NumShards
	if n == 0 {
		n = 1
	}
	if j.Shard < 0 || j.Shard >= n {
		return sum, fmt.Errorf("sample: shard %d of %d: want 0 ≤ shard < num_shards", j.Shard, n)
	}
	if len(j.Inputs) == 0 {
		return sum, errors.New("sample: no inputs")
	}
	if err := checkInputs(j.Inputs); err != nil {
		return sum, err
	}
	cfg := j.Config
	if err := prepareDir(j.Dir, cfg); err != nil {
		return sum, err
	}
	log := j.Log
	if log == nil {
		log = io.Discard
	}
	w, err := OpenJSONL(filepath.Join(j.Dir, ShardManifest(j.Shard, n)))
	if err != nil {
		return sum, err
	}
	defer w.Close()
	done, skipped, err := loadDone(j.Dir, cfg)
	if err != nil {
		return sum, err
	}

	// This shard's work, in input order, in fixed chunks of BatchSize.
	var todo []chunk
	M, B := cfg.M(), cfg.BatchSize
	for _, in := range j.Inputs {
		if ShardOf(in.ID, n) != j.Shard {
			continue
		}
		sum.Inputs++
		sum.Total += M
		if _, ok := skipped[in.ID]; ok {
			sum.Skipped = append(sum.Skipped, in.ID)
			sum.Existing += M
			continue
		}
		if err := removeTemps(filepath.Join(j.Dir, CandidateDir, in.ID)); err != nil {
			return sum, err
		}
		for lo := 0; lo < M; lo += B {
			hi := min(lo+B, M)
			complete := true
			for k := lo; k < hi; k++ {
				r, ok := done[key{in.ID, k}]
				if !ok {
					complete = false
					continue
				}
				if _, err := os.Stat(filepath.Join(j.Dir, r.File)); err != nil {
					return sum, fmt.Errorf("sample: candidate %d of %s is in the manifest but its file is gone: %w", k, in.ID, err)
				}
			}
			if complete {
				sum.Existing += hi - lo
			} else {
				todo = append(todo, chunk{in, lo, hi})
			}
		}
	}
	progress := func() {
		if j.Progress != nil {
			j.Progress(sum.Existing+sum.Sampled, sum.Total)
		}
	}
	progress()
	if len(todo) == 0 {
		return sum, nil
	}
	if j.Open == nil {
		return sum, errors.New("sample: no model to open")
	}
	s, err := j.Open()
	if err != nil {
		return sum, err
	}
	if c, ok := s.(interface{ Close() }); ok {
		defer c.Close()
	}
	if s.Name() != cfg.Settings.Model {
		return sum, fmt.Errorf("sample: the configuration says model %s but the sampler is %s", cfg.Settings.Model, s.Name())
	}

	// One input at a time: load it and prompt it once for all its chunks.
	var cur struct {
		id     string
		lr     *imageio.RGB8
		prompt string
		bad    bool
	}
	for _, c := range todo {
		if err := ctx.Err(); err != nil {
			return sum, fmt.Errorf("sample: %w", err)
		}
		if cur.id != c.in.ID {
			cur.id, cur.lr, cur.prompt, cur.bad = c.in.ID, nil, "", false
			cur.lr, err = imageio.Load(c.in.LR)
			if err == nil {
				cur.prompt, err = prompt(j, c.in, cur.lr)
			}
			if err != nil {
				if !j.SkipBadInputs || !errors.Is(err, imageio.ErrDecode) && !errors.Is(err, os.ErrNotExist) {
					return sum, fmt.Errorf("sample: input %s (%s): %w", c.in.ID, c.in.LR, err)
				}
				fmt.Fprintf(log, "warning: skipping input %s: %v\n", c.in.ID, err)
				if err := w.Append(Record{Input: c.in.ID, LR: c.in.LR, HR: c.in.HR, Index: -1, Model: cfg.Settings.Model,
					Settings: cfg.Settings, Config: cfg.ID(), Skipped: err.Error()}); err != nil {
					return sum, err
				}
				cur.bad = true
				sum.Skipped = append(sum.Skipped, c.in.ID)
			}
			if err := os.MkdirAll(filepath.Join(j.Dir, CandidateDir, c.in.ID), 0o755); err != nil {
				return sum, fmt.Errorf("sample: %w", err)
			}
		}
		if cur.bad {
			sum.Existing += c.hi - c.lo // nothing to do for it
			progress()
			continue
		}
		if err := runChunk(ctx, j, w, s, c, cur.lr, cur.prompt); err != nil {
			return sum, err
		}
		sum.Sampled += c.hi - c.lo
		progress()
	}
	return sum, nil
}

// runChunk samples one batch, writes its files and then records them.
func runChunk(ctx context.Context, j Job, w *JSONL, s Sampler, c chunk, lr *imageio.RGB8, prompt string) error {
	cfg := j.Config
	seeds := cfg.Seeds[c.lo:c.hi]
	imgs, err := s.Candidates(ctx, lr, prompt, seeds)
	if err != nil {
		return fmt.Errorf("sample: input %s, candidates %d–%d: %w", c.in.ID, c.lo, c.hi-1, err)
	}
	if len(imgs) != len(seeds) {
		return fmt.Errorf("sample: input %s: %d images for %d seeds", c.in.ID, len(imgs), len(seeds))
	}
	recs := make([]Record, len(imgs))
	for i, img := range imgs {
		k := c.lo + i
		data, sum, err := encodePNG(img)
		if err != nil {
			return fmt.Errorf("sample: input %s candidate %d: %w", c.in.ID, k, err)
		}
		rel := CandidateFile(c.in.ID, k)
		if err := writeAtomic(filepath.Join(j.Dir, rel), data); err != nil {
			return err
		}
		recs[i] = Record{Input: c.in.ID, LR: c.in.LR, HR: c.in.HR, Index: k, Seed: seeds[i], Model: cfg.Settings.Model,
			Prompt: prompt, Settings: cfg.Settings, Config: cfg.ID(), File: rel, SHA256: sum}
	}
	return w.Append(anys(recs)...)
}

func prompt(j Job, in Input, lr *imageio.RGB8) (string, error) {
	if in.Prompt != "" || j.Prompt == nil {
		return in.Prompt, nil
	}
	return j.Prompt(in, lr)
}

// checkInputs refuses empty or repeated ids.
func checkInputs(ins []Input) error {
	seen := map[string]bool{}
	for _, in := range ins {
		if in.ID == "" || in.LR == "" {
			return fmt.Errorf("sample: input %+v without id or LR file", in)
		}
		if seen[in.ID] {
			return fmt.Errorf("sample: input id %q appears twice", in.ID)
		}
		seen[in.ID] = true
	}
	return nil
}

// loadDone reads every shard manifest of dir: the candidates recorded and
// the inputs recorded as skipped. A record of another configuration is an
// error: sets are never mixed.
func loadDone(dir string, cfg Config) (map[key]Record, map[string]string, error) {
	files, err := shardManifests(dir)
	if err != nil {
		return nil, nil, err
	}
	done, skipped := map[key]Record{}, map[string]string{}
	id := cfg.ID()
	for _, f := range files {
		recs, err := ReadRecords(f)
		if err != nil {
			return nil, nil, err
		}
		for _, r := range recs {
			if r.Config != id {
				return nil, nil, fmt.Errorf("sample: %s holds candidates of another configuration (%s, this run is %s): refusing to mix them", f, r.Config, id)
			}
			if r.Skipped != "" {
				skipped[r.Input] = r.Skipped
				continue
			}
			done[key{r.Input, r.Index}] = r
		}
	}
	return done, skipped, nil
}

// DeviceType is the device-type word Settings records ("cpu", "cuda").
func DeviceType(d torch.Device) string {
	if d.IsCUDA() {
		return "cuda"
	}
	return "cpu"
}
