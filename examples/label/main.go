// Command label scores a candidate set made by examples/sample with the
// metrics of DP²O-SR's reward and writes the reward labels that
// examples/pairs turns into preference pairs (package preference/label).
//
//	go run ./examples/label --candidates cands/ --metrics reward --weights /models/iqa
//	go run ./examples/pairs --labels cands/labels.json --top_n 8 --output pairs.json
//
// Full-reference metrics compare each candidate with its input's HR image
// (the sample step records it). Raw scores go to CANDIDATES/scores.jsonl,
// one line per input and metric, as they are computed: a killed run
// continues where it stopped, and metrics added later are scored alone.
// The labels (raw scores and each group's hybrid reward: per-group min-max
// per metric, FR and NR halves weighing the same) go to
// CANDIDATES/labels.json.
//
// n processes can share the inputs (--shard i --num_shards n, each logging
// to CANDIDATES/scores.I-of-N.jsonl; a run without shard flags afterwards
// writes the labels), or run under torchrun, where the shard is the rank
// and rank 0 writes the labels once every rank is done:
//
//	torchrun --standalone --nproc_per_node 8 --no_python ./label --candidates cands/ --metrics reward --device cuda
package main

import (
	"fmt"
	"os"

	"github.com/urfave/cli/v2"

	"github.com/dp2osr/dp2o/examples/internal/launch"
)

func main() {
	if err := newApp().Run(os.Args); err != nil {
		fmt.Fprintln(os.Stderr, "label:", err)
		os.Exit(1)
	}
}

func newApp() *cli.App {
	return &cli.App{
		Name:      "label",
		Usage:     "score a candidate set with the reward's IQA metrics and write its reward labels (input of examples/pairs)",
		UsageText: "label --candidates CANDIDATES --metrics LIST [--weights IQA_FOLDER] [flags]",
		Flags: append([]cli.Flag{
			&cli.StringFlag{Name: "candidates", Usage: "the candidate folder made (and merged) by examples/sample (required)", Required: true},
			&cli.StringFlag{Name: "metrics", Value: "reward", Usage: "comma-separated metrics (pyiqa names), or fr (LPIPS, TOPIQ-FR, A-FINE FR), nr (MANIQA, MUSIQ, CLIPIQA+, TOPIQ-NR, A-FINE NR, Q-Align), reward (both: DP²O-SR's reward), all"},
			&cli.StringFlag{Name: "weights", Usage: "folder holding the metrics' published checkpoints under their published names (see each reward package)"},
			&cli.StringSliceFlag{Name: "weight", Usage: "name=path: the checkpoint (file or folder) of one metric, overriding --weights (repeatable)"},
			&cli.StringFlag{Name: "device", Value: "cpu", Usage: "where the metrics run: cpu, cuda or cuda:N"},
			&cli.StringFlag{Name: "dtype", Value: "float32", Usage: "compute dtype of the metric networks"},
			&cli.IntFlag{Name: "batch_size", Value: 0, Usage: "candidates per metric call (0: all candidates of an input at once)"},
			&cli.StringFlag{Name: "output", Usage: "the labels file to write (default: CANDIDATES/labels.json)"},
			&cli.BoolFlag{Name: "list", Usage: "list the registered metrics and exit"},
			&cli.BoolFlag{Name: "quiet", Usage: "no progress bar"},
		}, launch.ShardFlags("writes the labels")...),
		Action: run,
	}
}
