// Command sample makes DP²O-SR's candidate sets: for every LR image, M
// outputs of the frozen model (C-SD2, or C-FLUX with --model flux) with the
// seeds of a fixed noise pool, as PNG files with a JSON-lines manifest
// (package preference/sample).
//
//	go run ./examples/sample --input_dir data/ --output_dir cands/ --num_candidates 32
//
// --input_dir is a folder made by examples/degrade (lr/ and hr/); or give
// --lr_dir and --hr_dir. Candidate k of every input is sampled with seed
// --seed + k, the candidates of an input in batches of --batch_size. A run
// can be killed and rerun at any point; n processes (or machines) can each
// take a part with --shard i --num_shards n, and `sample merge` with the
// same inputs then checks that every candidate exists exactly once. Under
// torchrun the shard is the rank, and rank 0 merges once every rank is done:
//
//	torchrun --standalone --nproc_per_node 8 --no_python ./sample --input_dir data/ --output_dir cands/ --device cuda
package main

import (
	"fmt"
	"os"

	"github.com/urfave/cli/v2"

	"github.com/dp2osr/dp2o/examples/internal/candidates"
	"github.com/dp2osr/dp2o/examples/internal/launch"
)

func main() {
	if err := newApp().Run(os.Args); err != nil {
		fmt.Fprintln(os.Stderr, "sample:", err)
		os.Exit(1)
	}
}

func newApp() *cli.App {
	return &cli.App{
		Name:      "sample",
		Usage:     "sample M candidates per LR image with the frozen C-SD2 or C-FLUX model (DP²O-SR's candidate sets)",
		UsageText: "sample --input_dir DATA --output_dir CANDIDATES [flags]\n   sample merge --input_dir DATA --output_dir CANDIDATES",
		Description: "Candidate k of every input is the official pipeline (resize rules, ControlNet sampling, colour fix) with a generator\n" +
			"seeded --seed + k: the noise pool is the same for every input. The candidates of an input are sampled --batch_size\n" +
			"at a time, each with its own generator. Files are written atomically and recorded in OUTPUT/manifest.I-of-N.jsonl\n" +
			"(input, seed, model, settings, prompt, file, sha256) once their batch is complete: a killed run loses at most that\n" +
			"batch, a rerun continues, and a finished set is left as it is. OUTPUT/sample.json holds the settings: a folder made\n" +
			"with others is refused, never mixed. With --num_shards 1 the run ends with the merge (OUTPUT/manifest.jsonl); with\n" +
			"more, run `sample merge` once every shard is done. Under torchrun (one process per GPU:\n" +
			"torchrun --nproc_per_node N --no_python sample …) each rank samples shard $RANK of $WORLD_SIZE on cuda:$LOCAL_RANK,\n" +
			"the ranks wait for each other through libtorch's c10d (Gloo), and rank 0 merges.",
		Flags:  append(append(candidates.InputFlags(), outputFlag), append(append(candidates.ModelFlags("0: the paper's, 32 for sd2 and 64 for flux"), runFlags...), launch.ShardFlags("merges")...)...),
		Action: run,
		Commands: []*cli.Command{{
			Name:  "merge",
			Usage: "check that every candidate of every input exists exactly once (files present, hashes as recorded) and write OUTPUT/manifest.jsonl",
			Description: "Reads every OUTPUT/manifest.I-of-N.jsonl. Missing, duplicated or altered candidates, records of another\n" +
				"configuration and records of inputs not in the list are errors that name them; nothing is written then.",
			Flags:  append(candidates.InputFlags(), outputFlag),
			Action: runMerge,
		}},
	}
}

// outputFlag names the candidate folder.
var outputFlag = &cli.StringFlag{Name: "output_dir", Usage: "the candidate folder: sample.json, manifest files, candidates/<name>/<name>_<k>.png (required)"}

// runFlags are sample's own.
var runFlags = []cli.Flag{
	&cli.StringFlag{Name: "on_error", Value: "fail", Usage: "an unreadable LR image: fail (stop with an error) or skip (warn and record it in the manifest)"},
	&cli.BoolFlag{Name: "quiet", Usage: "no progress bar"},
}
