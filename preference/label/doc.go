// Package label scores DP²O-SR candidate sets with the reward's metrics
// and turns the scores into the reward labels that preference pairs are
// built from (SPEC §4).
//
// Run reads a candidate folder's merged manifest (package
// preference/sample), scores the candidates of every input with every
// configured metric (full-reference metrics against the input's HR image)
// and appends one line per (input, metric) to DIR/scores.jsonl: the raw
// scores of the M candidates, with the files' SHA-256 they were computed
// from. The log is resumable as the manifests are (one synced append per
// line; a partial last line is dropped), and a rerun skips what is scored.
//
// Build then gathers the raw scores of the chosen metrics per input,
// computes the hybrid reward of each group (package reward: per-group
// min-max, FR and NR halves) and returns the Labels that Save writes as
// DIR/labels.json, the file examples/pairs reads:
//
//	{"format": "dp2o-labels/1",
//	 "metrics": [{"name": "lpips", "kind": "fr", "higher_is_better": false}, ...],
//	 "groups": [{"id", "lr", "hr", "prompt", "candidates": [M files, absolute paths],
//	             "raw": [[M × metrics]], "reward": [M]}, ...]}
package label
