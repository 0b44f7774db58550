package main

import (
	"context"
	"fmt"
	"os"
	"runtime"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/dp2osr/dp2o/diffusion/colorfix"
	"github.com/dp2osr/dp2o/examples/internal/launch"
	"github.com/dp2osr/dp2o/flow"
	"github.com/dp2osr/dp2o/imageio"
	"github.com/dp2osr/dp2o/torch"
)

// Defaults of --model flux: the bundled tiny FLUX-structured model, and the
// official test_flux_controlnet.py settings.
const (
	defaultFluxBase       = "assets/tiny-flux"
	defaultFluxControlNet = "assets/tiny-flux/controlnet/model.safetensors"
	defaultFluxOutput     = "out/sr_flux"
	fluxSteps             = 25
	fluxGuidance          = 2.5
)

// fluxFlags are the flags only --model flux reads.
func fluxFlags() []cli.Flag {
	return []cli.Flag{
		&cli.StringFlag{Name: "model", Value: "sd2", Usage: "sd2 (C-SD2 / DP²O-SD2, test_sd2b_controlnet.py) or flux (C-FLUX / DP²O-FLUX, test_flux_controlnet.py: defaults 25 steps, guidance 2.5, the bundled tiny FLUX model)"},
		&cli.IntFlag{Name: "num_double_layers", Value: 4, Usage: "flux: double blocks of the ControlNet built from the transformer (ignored when a config.json sits beside the checkpoint)"},
		&cli.IntFlag{Name: "num_single_layers", Value: 0, Usage: "flux: single blocks of the ControlNet built from the transformer"},
		&cli.BoolFlag{Name: "pad16", Usage: "flux: pad a processing image whose sides are multiples of 8 but not 16 (edge replication) and crop the result, instead of failing as the official script does"},
	}
}

// runFlux is the action of --model flux: test_flux_controlnet.py's flow
// with its defaults where the shared flags were not given.
func runFlux(c *cli.Context) error {
	opts := flow.DefaultUpscaleOptions()
	opts.Prompt = c.String("prompt")
	opts.Steps = fluxSteps
	if c.IsSet("num_inference_steps") {
		opts.Steps = c.Int("num_inference_steps")
	}
	opts.GuidanceScale = fluxGuidance
	if c.IsSet("guidance_scale") {
		opts.GuidanceScale = c.Float64("guidance_scale")
	}
	opts.ConditioningScale = c.Float64("control_scale")
	opts.ProcessSize = c.Int("process_size")
	opts.Upscale = c.Int("upscale")
	opts.PadTo16 = c.Bool("pad16")
	method, err := colorfix.ParseMethod(c.String("align_method"))
	if err != nil {
		return fmt.Errorf("--align_method: %w", err)
	}
	opts.AlignMethod = method
	samples := c.Int("sample_times")
	switch {
	case samples < 1:
		return fmt.Errorf("--sample_times must be at least 1, got %d", samples)
	case opts.Steps < 1:
		return fmt.Errorf("--num_inference_steps must be at least 1, got %d", opts.Steps)
	case opts.Upscale < 1:
		return fmt.Errorf("--upscale must be at least 1, got %d", opts.Upscale)
	case opts.ProcessSize < 16:
		return fmt.Errorf("--process_size must be at least 16, got %d", opts.ProcessSize)
	case c.Int("num_double_layers") < 1 || c.Int("num_single_layers") < 0:
		return fmt.Errorf("--num_double_layers must be at least 1 and --num_single_layers at least 0")
	}

	dev, dtype, err := launch.DeviceAndDType(c.String("device"), c.String("mixed_precision"))
	if err != nil {
		return err
	}
	if n := c.Int("threads"); n > 0 {
		torch.SetNumThreads(n)
	}
	if !dev.IsCUDA() && torch.NumThreads() > 1 {
		runtime.GOMAXPROCS(1) // see run
	}
	inputs, err := imageio.ListImages(c.String("image_path"))
	if err != nil {
		return err
	}
	if len(inputs) == 0 {
		return fmt.Errorf("no images (*.png *.jpg *.jpeg *.bmp *.tiff *.webp) in %s", c.String("image_path"))
	}
	outDir := c.String("output_dir")
	if !c.IsSet("output_dir") {
		outDir = defaultFluxOutput
	}
	if err := os.MkdirAll(outDir, 0o755); err != nil {
		return fmt.Errorf("output folder: %w", err)
	}

	base, cn := defaultFluxBase, defaultFluxControlNet
	if c.IsSet("pretrained_model_name_or_path") {
		base = c.String("pretrained_model_name_or_path")
	}
	if c.IsSet("controlnet_model_name_or_path") {
		cn = c.String("controlnet_model_name_or_path")
	}
	if base == defaultFluxBase && cn == defaultFluxControlNet {
		fmt.Println("note: running the bundled tiny random-weight FLUX model: this shows that the pipeline works end to end, not its quality.")
		fmt.Println("      for real results: --pretrained_model_name_or_path black-forest-labs/FLUX.1-dev --controlnet_model_name_or_path dp2o-flux/model.safetensors")
	}
	start := time.Now()
	pipe, err := flow.LoadCFLUX(base, cn, flow.LoadOptions{
		Device: dev, DType: dtype, NoAutocast: c.Bool("no_autocast"),
		NumDoubleLayers: c.Int("num_double_layers"), NumSingleLayers: c.Int("num_single_layers"),
		Revision: c.String("revision"), Hub: hubClient(c),
	})
	if err != nil {
		return err
	}
	defer pipe.Close()
	pipe.VAE.Tiling.Enabled = c.Bool("vae_tiling")
	fmt.Printf("loaded %s on %v (%v) in %.1fs\n", base, dev, dtype, time.Since(start).Seconds())

	return upscaleAll(c, dev, inputs, outDir, samples, opts.Steps, func(ctx context.Context, img *imageio.RGB8, prompt string, progress func(step, total int), gen *torch.Generator) (*imageio.RGB8, error) {
		o := opts
		o.Prompt, o.Progress = prompt, progress
		return pipe.Upscale(ctx, img, o, gen)
	})
}
