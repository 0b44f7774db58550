// Command degrade makes the LR training inputs of DP²O-SR from a folder of
// high-quality images: for every image, a square HR crop and its LR image
// from ResShift's first-order Real-ESRGAN degradation (package
// preference/degrade), each from its own seed, with the record of what was
// drawn.
//
//	go run ./examples/degrade --hr_dir photos/ --output_dir data/ --seed 0
//
// It writes data/hr/<name>.png (the HR crop), data/lr/<name>.png (the LR
// image, 1/sf of the crop) and data/records/<name>.json (the parameter
// record: kernels, resize, noise, JPEG qualities, seed). The run is
// resumable: an image whose record exists is done, files are written
// atomically (the record last), and rerunning a finished run does nothing.
package main

import (
	"fmt"
	"os"

	"github.com/urfave/cli/v2"
)

func main() {
	if err := newApp().Run(os.Args); err != nil {
		fmt.Fprintln(os.Stderr, "degrade:", err)
		os.Exit(1)
	}
}

func newApp() *cli.App {
	return &cli.App{
		Name:      "degrade",
		Usage:     "synthesise LR training inputs from HR images with ResShift's first-order Real-ESRGAN degradation (DP²O-SR's data)",
		UsageText: "degrade --hr_dir HR_FOLDER --output_dir OUT [flags]",
		Description: "For each image of --hr_dir (png, jpg, jpeg, bmp, tiff, webp) it cuts a random --gt_size square (reflect-padding\n" +
			"smaller images), degrades it (blur, random resize, Gaussian/Poisson noise, JPEG, resize to 1/sf with a sinc filter,\n" +
			"a second JPEG) and writes OUT/hr/NAME.png, OUT/lr/NAME.png and OUT/records/NAME.json. Image NAME's seed is\n" +
			"--seed + FNV-1a(NAME) (mod 2^63), so an image always gets the same LR whatever else is in the folder.\n" +
			"Rerunning continues where a run stopped; a finished run is left as it is. OUT/degrade.json holds the configuration\n" +
			"and --seed: an output folder made with other settings is refused, never mixed.",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "hr_dir", Usage: "folder of high-quality images (required)", Required: true},
			&cli.StringFlag{Name: "output_dir", Usage: "where hr/, lr/ and records/ go (required; created if missing)", Required: true},
			&cli.Uint64Flag{Name: "seed", Value: 0, Usage: "base seed; each image's seed is this plus a hash of its name"},
			&cli.StringFlag{Name: "config", Value: "testing", Usage: "degradation parameters: testing (ResShift's degradation_testing_realesrgan.yaml, SPEC §7.2's main reading), " +
				"train_first_order (ResShift's training config without its second stage), or a JSON file with ResShift's key names (unset keys come from the config its \"name\" key names)"},
			&cli.IntFlag{Name: "gt_size", Value: -1, Usage: "side of the square HR crop, a multiple of the scale factor; 0 keeps whole images (default: the config's, 512)"},
			&cli.StringFlag{Name: "on_error", Value: "skip", Usage: "an unreadable image: skip (warn, list it in OUT/skipped.json) or fail (stop with an error)"},
			&cli.StringFlag{Name: "device", Value: "cpu", Usage: "where the degradation runs: cpu or cuda[:N] (the draws always come from a CPU generator)"},
			&cli.BoolFlag{Name: "quiet", Usage: "no progress bar"},
		},
		Action: run,
	}
}
