// Command evaluate measures what DP²O-SR's reward does (package
// preference/eval):
//
//	go run ./examples/evaluate curves --candidates C-SD2=cands_c/ --candidates DP2O-SD2=cands_d/ --output_dir eval/
//	go run ./examples/evaluate model --input_dir test/ --controlnet_model_name_or_path ckpt/model.safetensors --metrics reward --weights /models/iqa --output_dir eval/
//	go run ./examples/evaluate table --outputs C-SD2=out_c/ --outputs DP2O-SD2=out_d/ --hr_dir hr/ --output_dir eval/
//
// curves: Best@M, Mean@M and Worst@M of the reward for M = 1 … max_m (the
// paper's Figure 5) from labelled candidate sets: run examples/sample with
// the model (or checkpoint) on the test folder with --num_candidates 64,
// then examples/label, then this; or `evaluate model` does the three for
// one model (or checkpoint) and a test folder. Writes curves.csv and
// curves.png.
//
// table: the paper's metric table (PSNR, SSIM, LPIPS, the NR metrics, …)
// of folders of outputs against their HR images. Writes table.csv and
// table.md and prints the Markdown.
package main

import (
	"fmt"
	"os"

	"github.com/urfave/cli/v2"

	"github.com/dp2osr/dp2o/examples/internal/candidates"
)

func main() {
	if err := newApp().Run(os.Args); err != nil {
		fmt.Fprintln(os.Stderr, "evaluate:", err)
		os.Exit(1)
	}
}

// metricFlags are the metric flags; withDevice adds --device and --dtype
// (the model subcommand has its own --device, which the metrics share).
func metricFlags(def string, withDevice bool) []cli.Flag {
	fs := []cli.Flag{
		&cli.StringFlag{Name: "metrics", Value: def, Usage: "comma-separated metrics (pyiqa names), or fr, nr, reward (the reward's FR and NR sets), all"},
		&cli.StringFlag{Name: "weights", Usage: "folder holding the metrics' published checkpoints under their published names"},
		&cli.StringSliceFlag{Name: "weight", Usage: "name=path: the checkpoint of one metric, overriding --weights (repeatable)"},
	}
	if withDevice {
		fs = append(fs,
			&cli.StringFlag{Name: "device", Value: "cpu", Usage: "where the metrics run: cpu, cuda or cuda:N"},
			&cli.StringFlag{Name: "dtype", Value: "float32", Usage: "compute dtype of the metric networks"})
	}
	return fs
}

func newApp() *cli.App {
	return &cli.App{
		Name:  "evaluate",
		Usage: "Best@M / Mean@M / Worst@M curves of the reward, and the metric table of output folders",
		Commands: []*cli.Command{
			{
				Name:      "curves",
				Usage:     "Best@M, Mean@M, Worst@M of the reward over M (CSV and PNG) from labelled candidate sets",
				UsageText: "evaluate curves --candidates [NAME=]DIR [--candidates [NAME=]DIR …] --output_dir OUT [flags]",
				Description: "Each --candidates folder is a candidate set of one model on the test images (examples/sample, e.g. with\n" +
					"--num_candidates 64) scored by examples/label. A sample's reward is the hybrid reward with each metric min-max\n" +
					"normalised over every sample of every folder given together (or between --bounds), so curves of several\n" +
					"models in one call are comparable. Best@M (Worst@M, Mean@M) is the best (worst, mean) reward among M samples\n" +
					"of an image, averaged over the images: over every M-subset of the samples (--estimator subsets, exact) or\n" +
					"over the first M seeds (--estimator prefix).",
				Flags: []cli.Flag{
					&cli.StringSliceFlag{Name: "candidates", Usage: "[NAME=]DIR: a labelled candidate folder; NAME labels its curves (default: the folder's name); repeatable (required)", Required: true},
					&cli.StringFlag{Name: "metrics", Usage: "the scored metrics that make the reward, comma-separated (default: every metric in the first folder's scores.jsonl)"},
					&cli.IntFlag{Name: "max_m", Value: 0, Usage: "largest M (0: the number of candidates per input; the paper plots 1…64)"},
					&cli.StringFlag{Name: "estimator", Value: "subsets", Usage: "subsets (expectation over every M-subset) or prefix (the first M seeds)"},
					&cli.StringFlag{Name: "bounds", Usage: "JSON file {\"metric\": [low, high], …}: fixed normalisation ranges (raw units) instead of the pooled min and max"},
					&cli.StringFlag{Name: "title", Value: "Best@M / Mean@M / Worst@M", Usage: "title of the plot"},
					&cli.StringFlag{Name: "output_dir", Value: ".", Usage: "where curves.csv and curves.png go (created if missing)"},
				},
				Action: runCurves,
			},
			{
				Name:      "model",
				Usage:     "Best@M, Mean@M, Worst@M of a model (or ControlNet checkpoint) on a test folder: sample, label and curves in one go",
				UsageText: "evaluate model --input_dir TEST --controlnet_model_name_or_path CKPT --metrics LIST --output_dir OUT [flags]",
				Description: "Samples --num_candidates (default 64) outputs per test image into --work_dir (a candidate folder as\n" +
					"examples/sample makes: resumable, reused when rerun), scores them (examples/label's scores.jsonl and\n" +
					"labels.json) and writes curves.csv and curves.png as `evaluate curves` does. The reward is normalised over\n" +
					"this model's samples alone; to compare models on one scale, pass their work folders to `evaluate curves`.",
				Flags: append(append(append(candidates.InputFlags(), candidates.ModelFlags("0: 64, the paper's Figure 5")...), metricFlags("reward", false)...),
					&cli.StringFlag{Name: "name", Usage: "the model's name in the plot and CSV (default: the ControlNet file's folder name)"},
					&cli.StringFlag{Name: "work_dir", Usage: "the candidate folder (default: OUTPUT/candidates)"},
					&cli.IntFlag{Name: "max_m", Value: 0, Usage: "largest M (0: --num_candidates)"},
					&cli.StringFlag{Name: "estimator", Value: "subsets", Usage: "subsets (expectation over every M-subset) or prefix (the first M seeds)"},
					&cli.StringFlag{Name: "bounds", Usage: "JSON file {\"metric\": [low, high], …}: fixed normalisation ranges instead of the pooled min and max"},
					&cli.StringFlag{Name: "title", Value: "Best@M / Mean@M / Worst@M", Usage: "title of the plot"},
					&cli.StringFlag{Name: "output_dir", Value: ".", Usage: "where curves.csv and curves.png go (created if missing)"},
					&cli.BoolFlag{Name: "quiet", Usage: "no progress bars"},
				),
				Action: runModel,
			},
			{
				Name:      "table",
				Usage:     "the paper's metric table of output folders against HR images (CSV and Markdown)",
				UsageText: "evaluate table --outputs [NAME=]DIR [--outputs …] --hr_dir HR --output_dir OUT [flags]",
				Description: "Every image of an output folder is scored with every metric, full-reference ones against the HR image\n" +
					"of the same name. table.csv holds the mean, population std and count per method and metric and every\n" +
					"image's score; table.md the means as the paper lays them out (a row per metric, a column per method,\n" +
					"the best in bold).",
				Flags: append([]cli.Flag{
					&cli.StringSliceFlag{Name: "outputs", Usage: "[NAME=]DIR: a folder of SR outputs named as the HR images; NAME heads its column (default: the folder's name); repeatable (required)", Required: true},
					&cli.StringFlag{Name: "hr_dir", Usage: "folder of the HR images (needed by full-reference metrics)"},
					&cli.StringFlag{Name: "output_dir", Value: ".", Usage: "where table.csv and table.md go (created if missing)"},
					&cli.BoolFlag{Name: "quiet", Usage: "no progress bar"},
				}, metricFlags("reward,psnr,ssim", true)...),
				Action: runTable,
			},
		},
	}
}
