package sample

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
)

// MergeReport says what Merge found.
type MergeReport struct {
	Shards     int      // shard manifest files read
	Candidates int      // candidates in the merged manifest
	Skipped    []string // inputs recorded as unreadable
}

// Merge checks a candidate folder against its inputs and writes the merged
// manifest (manifest.jsonl, atomically): every candidate k < M of every
// input recorded exactly once over all shard manifests (an input recorded
// as skipped has none), all of this folder's configuration, every file
// present with the recorded SHA-256, and nothing recorded for inputs that
// are not in the list. Any missing, duplicated, foreign or altered
// candidate is an error naming them; nothing is written then. The merged
// manifest lists candidates in input order, then index order.
func Merge(dir string, inputs []Input) (rep MergeReport, err error) {
	cfg, err := LoadConfig(dir)
	if err != nil {
		return rep, err
	}
	if err := checkInputs(inputs); err != nil {
		return rep, err
	}
	files, err := shardManifests(dir)
	if err != nil {
		return rep, err
	}
	if len(files) == 0 {
		return rep, fmt.Errorf("sample: %s: no shard manifests (manifest.I-of-N.jsonl): nothing was sampled there", dir)
	}
	rep.Shards = len(files)
	known := map[string]bool{}
	for _, in := range inputs {
		known[in.ID] = true
	}
	id := cfg.ID()
	got := map[key]Record{}
	where := map[key]string{}
	skipped := map[string]bool{}
	var dups, foreign, alien []string
	for _, f := range files {
		recs, err := ReadRecords(f)
		if err != nil {
			return rep, err
		}
		for _, r := range recs {
			switch {
			case r.Config != id:
				foreign = append(foreign, fmt.Sprintf("%s #%d (config %s) in %s", r.Input, r.Index, r.Config, filepath.Base(f)))
				continue
			case !known[r.Input]:
				alien = append(alien, fmt.Sprintf("%s in %s", r.Input, filepath.Base(f)))
				continue
			case r.Skipped != "":
				skipped[r.Input] = true
				continue
			case r.Index < 0 || r.Index >= cfg.M():
				return rep, fmt.Errorf("sample: %s: candidate %d of %s outside the noise pool of %d", f, r.Index, r.Input, cfg.M())
			case r.Seed != cfg.Seeds[r.Index]:
				return rep, fmt.Errorf("sample: %s: candidate %d of %s has seed %d, the noise pool says %d", f, r.Index, r.Input, r.Seed, cfg.Seeds[r.Index])
			}
			k := key{r.Input, r.Index}
			if prev, dup := where[k]; dup {
				dups = append(dups, fmt.Sprintf("%s #%d (%s and %s)", r.Input, r.Index, filepath.Base(prev), filepath.Base(f)))
				continue
			}
			got[k], where[k] = r, f
		}
	}
	var missing, bad []string
	var merged []Record
	for _, in := range inputs {
		if skipped[in.ID] {
			rep.Skipped = append(rep.Skipped, in.ID)
			continue
		}
		for k := 0; k < cfg.M(); k++ {
			r, ok := got[key{in.ID, k}]
			if !ok {
				missing = append(missing, fmt.Sprintf("%s #%d", in.ID, k))
				continue
			}
			sum, err := FileSHA256(filepath.Join(dir, r.File))
			if err != nil {
				bad = append(bad, fmt.Sprintf("%s #%d: %v", in.ID, k, err))
				continue
			}
			if sum != r.SHA256 {
				bad = append(bad, fmt.Sprintf("%s #%d: %s has SHA-256 %s…, the manifest says %s…", in.ID, k, r.File, sum[:12], r.SHA256[:min(12, len(r.SHA256))]))
				continue
			}
			merged = append(merged, r)
		}
	}
	var errs []error
	report := func(what string, list []string) {
		if len(list) > 0 {
			errs = append(errs, fmt.Errorf("%d %s: %s", len(list), what, preview(list)))
		}
	}
	report("candidates missing", missing)
	report("candidates recorded more than once", dups)
	report("records of another configuration", foreign)
	report("records of inputs not in the input list", alien)
	report("candidate files missing or altered", bad)
	if len(errs) > 0 {
		return rep, fmt.Errorf("sample: merging %s: %w", dir, errors.Join(errs...))
	}
	var buf bytes.Buffer
	for _, r := range merged {
		b, err := json.Marshal(r)
		if err != nil {
			return rep, fmt.Errorf("sample: %w", err)
		}
		buf.Write(b)
		buf.WriteByte('\n')
	}
	if err := writeAtomic(filepath.Join(dir, ManifestFile), buf.Bytes()); err != nil {
		return rep, err
	}
	rep.Candidates = len(merged)
	return rep, nil
}

// Groups gathers a merged manifest's records by input, in manifest order:
// each group's records are its candidates in index order.
func Groups(recs []Record) (ids []string, groups map[string][]Record) {
	groups = map[string][]Record{}
	for _, r := range recs {
		if r.Skipped != "" {
			continue
		}
		if _, ok := groups[r.Input]; !ok {
			ids = append(ids, r.Input)
		}
		groups[r.Input] = append(groups[r.Input], r)
	}
	return ids, groups
}
