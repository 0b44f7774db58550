// Command pairs builds DP²O-SR's preference pairs and their HPO weights
// from the reward labels of candidate groups, and writes the pair file that
// training reads (package preference).
//
//	go run ./examples/pairs --labels labels.json --top_n 8 --output pairs.json
//
// labels.json lists the metrics and, per LR input, its candidates with
// their raw metric scores (or their hybrid rewards):
//
//	{"metrics": [{"name": "lpips", "kind": "fr", "higher_is_better": false}, ...],
//	 "groups": [{"id": "0001", "lr": "lr/0001.png", "hr": "hr/0001.png", "prompt": "tree, house",
//	             "candidates": ["cand/0001_00.png", ...], "raw": [[0.31, ...], ...]}, ...]}
//
// A group may give "reward": [...] instead of "raw". The rewards are the
// hybrid reward of SPEC §4 (per-group min-max of each metric, the FR and NR
// halves weighing the same); pairs are every top-N × bottom-N combination
// of a group; weights are w_intra·w_inter with σ over the whole set.
package main

import (
	"fmt"
	"os"

	"github.com/urfave/cli/v2"
)

func main() {
	if err := newApp().Run(os.Args); err != nil {
		fmt.Fprintln(os.Stderr, "pairs:", err)
		os.Exit(1)
	}
}

func newApp() *cli.App {
	return &cli.App{
		Name:      "pairs",
		Usage:     "build HPO-weighted preference pairs from candidate reward labels and write the pair file training reads",
		UsageText: "pairs --labels LABELS.json --top_n N --output PAIRS.json",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "labels", Usage: "the reward labels: metrics and, per group, candidates with raw scores or rewards (JSON, see the package doc; required)", Required: true},
			&cli.IntFlag{Name: "top_n", Value: 8, Usage: "N: the best N candidates of a group are paired with its worst N (N² pairs per group; the paper: 8 of M = 32 for SD2, 4 of M = 64 for FLUX)"},
			&cli.StringFlag{Name: "output", Value: "pairs.json", Usage: "the pair file to write (atomically)"},
		},
		Action: run,
	}
}
