// Command sr is the DP²O-SR super-resolution CLI: the official
// test_sd2b_controlnet.py (C-SD2 / DP²O-SD2, the default) and, with
// --model flux, test_flux_controlnet.py (C-FLUX / DP²O-FLUX) in Go, with
// their flags and defaults.
//
//	go run ./examples/sr \
//	  --image_path photos/ --output_dir out/ \
//	  --pretrained_model_name_or_path stable-diffusion-2-base \
//	  --controlnet_model_name_or_path dp2o-sd2/model.safetensors \
//	  --prompt "tree, house, sky" --upscale 4
//
// Without flags it runs the bundled tiny random-weight model on the bundled
// sample, which shows that the pipeline works end to end, not its quality.
package main

import (
	"fmt"
	"os"

	"github.com/urfave/cli/v2"
)

func main() {
	if err := newApp().Run(os.Args); err != nil {
		fmt.Fprintln(os.Stderr, "sr:", err)
		os.Exit(1)
	}
}

func newApp() *cli.App {
	return &cli.App{
		Name:      "sr",
		Usage:     "real-world image super-resolution with C-SD2 / DP²O-SD2 (SD2-base + ControlNet) or, with --model flux, C-FLUX / DP²O-FLUX (FLUX.1-dev + ControlNet)",
		UsageText: "sr [flags]   (defaults: the bundled tiny model on the bundled sample image)",
		Flags:     append(flags(), fluxFlags()...),
		Action:    dispatch,
	}
}

// dispatch runs the pipeline --model names.
func dispatch(c *cli.Context) error {
	switch c.String("model") {
	case "sd2":
		return run(c)
	case "flux":
		return runFlux(c)
	}
	return fmt.Errorf("--model must be sd2 or flux, got %q", c.String("model"))
}
