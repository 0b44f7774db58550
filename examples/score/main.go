// Command score scores images with any set of the IQA metrics of the
// DP²O-SR reward (pyiqa's metric names), PSNR and SSIM: one image, a
// folder, or a folder against a folder of references (paired by file
// name), as a table or CSV.
//
//	go run ./examples/score --metrics psnry,ssim --ref gt/ sr/
//	go run ./examples/score --metrics lpips,topiq_fr,topiq_nr --weights /models/iqa --ref gt.png sr.png
//	go run ./examples/score --metrics reward --weights /models/iqa --ref gt.png --reward candidates/
//
// Full-reference metrics need --ref; no-reference metrics ignore it.
// --weights is a folder holding the published checkpoints under their
// published names (each metric's package documents which); --weight
// name=path overrides it for one metric.
package main

import (
	"fmt"
	"os"

	"github.com/urfave/cli/v2"
)

func main() {
	if err := newApp().Run(os.Args); err != nil {
		fmt.Fprintln(os.Stderr, "score:", err)
		os.Exit(1)
	}
}

func newApp() *cli.App {
	return &cli.App{
		Name:      "score",
		Usage:     "image quality of an image or a folder (against a reference image or folder) with pyiqa's metrics",
		UsageText: "score [flags] IMAGE_OR_FOLDER",
		Flags:     flags(),
		Action:    run,
	}
}

func flags() []cli.Flag {
	return []cli.Flag{
		&cli.StringFlag{Name: "metrics", Aliases: []string{"m"}, Value: "psnry,ssim",
			Usage: "comma-separated metric names (pyiqa's), or fr (LPIPS, TOPIQ-FR, A-FINE FR), nr (the six NR metrics of the reward), reward (both), all (every registered metric)"},
		&cli.StringFlag{Name: "ref", Aliases: []string{"r"}, Usage: "reference image, or folder of references paired by file name (needed by full-reference metrics)"},
		&cli.StringFlag{Name: "weights", Aliases: []string{"w"}, Usage: "folder holding the published checkpoints of the metrics"},
		&cli.StringSliceFlag{Name: "weight", Usage: "name=path: the checkpoint (file or folder) of one metric, overriding --weights"},
		&cli.StringFlag{Name: "device", Value: "cpu", Usage: "cpu, cuda or cuda:N"},
		&cli.StringFlag{Name: "dtype", Value: "float32", Usage: "compute dtype of the networks"},
		&cli.StringFlag{Name: "format", Aliases: []string{"f"}, Value: "table", Usage: "table or csv"},
		&cli.StringFlag{Name: "output", Aliases: []string{"o"}, Usage: "write the result to this file instead of stdout"},
		&cli.BoolFlag{Name: "reward", Usage: "also give the hybrid reward of the images taken as one group (per-metric min-max over them, FR and NR halves)"},
		&cli.BoolFlag{Name: "list", Usage: "list the registered metrics and exit"},
	}
}
