package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"

	"github.com/schollz/progressbar/v3"
	"github.com/urfave/cli/v2"

	"github.com/dp2osr/dp2o/imageio"
	"github.com/dp2osr/dp2o/torch"
)

// upscaler super-resolves one image with the given prompt, reporting its
// steps to progress (nil: no report): a loaded pipeline's Upscale with the
// command's options.
type upscaler func(ctx context.Context, img *imageio.RGB8, prompt string, progress func(step, total int), gen *torch.Generator) (*imageio.RGB8, error)

// upscaleAll is the official scripts' loop, shared by both models: every
// input, samples times each, from one generator seeded once; prompts from
// --prompt or the tagger; Ctrl-C stops between steps; an image that fails
// is reported and the others go on.
func upscaleAll(c *cli.Context, dev torch.Device, inputs []string, outDir string, samples, steps int, up upscaler) error {
	prompts, err := newPrompter(c, dev)
	if err != nil {
		return err
	}
	defer prompts.Close()

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	// One generator for all images and samples, as the official scripts.
	gen, err := torch.NewGenerator(generatorDevice(dev), uint64(c.Int64("seed")))
	if err != nil {
		return err
	}

	var failed []error
	for i, in := range inputs {
		for k := 0; k < samples; k++ {
			out := outputPath(outDir, in, k, samples)
			label := fmt.Sprintf("[%d/%d] %s", i+1, len(inputs), filepath.Base(in))
			if samples > 1 {
				label += fmt.Sprintf(" sample %d/%d", k+1, samples)
			}
			if err := upscaleOne(ctx, up, prompts, in, out, label, steps, gen, c.Bool("quiet")); err != nil {
				if errors.Is(err, context.Canceled) {
					return err
				}
				fmt.Fprintf(os.Stderr, "%s: %v\n", label, err)
				failed = append(failed, err)
				break
			}
		}
	}
	if len(failed) > 0 {
		return fmt.Errorf("%d of %d images failed: %w", len(failed), len(inputs), errors.Join(failed...))
	}
	return nil
}

// upscaleOne loads, prompts, super-resolves and writes one image; the
// output file appears only when complete.
func upscaleOne(ctx context.Context, up upscaler, prompts *prompter, in, out, label string, steps int, gen *torch.Generator, quiet bool) error {
	img, err := imageio.Load(in)
	if err != nil {
		return err
	}
	// The prompt: --prompt, or the RAM/DAPE tags of the image as loaded.
	prompt, err := prompts.prompt(img)
	if err != nil {
		return err
	}
	var bar *progressbar.ProgressBar
	var progress func(step, total int)
	if !quiet {
		bar = progressbar.NewOptions(steps, progressbar.OptionSetDescription(label),
			progressbar.OptionShowCount(), progressbar.OptionSetWriter(os.Stderr),
			progressbar.OptionClearOnFinish())
		progress = func(step, total int) { _ = bar.Set(step) }
	}
	res, err := up(ctx, img, prompt, progress, gen)
	if bar != nil {
		_ = bar.Finish()
	}
	if err != nil {
		return err
	}
	if err := imageio.SavePNG(out, res); err != nil {
		return err
	}
	fmt.Printf("%s → %s (%d×%d)\n", label, out, res.W, res.H)
	return nil
}
