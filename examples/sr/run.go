package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/dp2osr/dp2o/diffusion"
	"github.com/dp2osr/dp2o/diffusion/colorfix"
	"github.com/dp2osr/dp2o/examples/internal/launch"
	"github.com/dp2osr/dp2o/imageio"
	"github.com/dp2osr/dp2o/torch"
)

// run is the CLI's action: validate every flag and input first, load the
// models once, then process the images in sorted order with one generator.
func run(c *cli.Context) error {
	opts := diffusion.DefaultUpscaleOptions()
	opts.Prompt = c.String("prompt")
	opts.NegativePrompt = c.String("negative_prompt")
	opts.Steps = c.Int("num_inference_steps")
	opts.GuidanceScale = c.Float64("guidance_scale")
	opts.ConditioningScale = c.Float64("control_scale")
	opts.ProcessSize = c.Int("process_size")
	opts.Upscale = c.Int("upscale")
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
	case opts.ProcessSize < 8:
		return fmt.Errorf("--process_size must be at least 8, got %d", opts.ProcessSize)
	}

	dev, dtype, err := launch.DeviceAndDType(c.String("device"), c.String("mixed_precision"))
	if err != nil {
		return err
	}
	if n := c.Int("threads"); n > 0 {
		torch.SetNumThreads(n)
	}
	if !dev.IsCUDA() && torch.NumThreads() > 1 {
		// One goroutine does all the work; with more Go Ps the scheduler's
		// threads wake up around every cgo call and preempt libtorch's
		// OpenMP workers (on a 2-core machine the step time doubled).
		runtime.GOMAXPROCS(1)
	}

	inputs, err := imageio.ListImages(c.String("image_path"))
	if err != nil {
		return err
	}
	if len(inputs) == 0 {
		return fmt.Errorf("no images (*.png *.jpg *.jpeg *.bmp *.tiff *.webp) in %s", c.String("image_path"))
	}
	outDir := c.String("output_dir")
	if err := os.MkdirAll(outDir, 0o755); err != nil {
		return fmt.Errorf("output folder: %w", err)
	}

	base := c.String("pretrained_model_name_or_path")
	if base == defaultBase && c.String("controlnet_model_name_or_path") == defaultControlNet {
		fmt.Println("note: running the bundled tiny random-weight model: this shows that the pipeline works end to end, not its quality.")
		fmt.Println("      for real results: --pretrained_model_name_or_path stabilityai/stable-diffusion-2-base --controlnet_model_name_or_path dp2o-sd2/model.safetensors")
	}
	start := time.Now()
	pipe, err := diffusion.LoadSD2(base, c.String("controlnet_model_name_or_path"), diffusion.LoadOptions{Device: dev, DType: dtype,
		NoAutocast: c.Bool("no_autocast"), Revision: c.String("revision"), Variant: c.String("variant"), Hub: hubClient(c)})
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

// outputPath is <output_dir>/<basename>.png, basename being the file name
// up to its first '.', as the official script; with several samples each
// gets its own file <basename>_<k>.png instead of overwriting one.
func outputPath(dir, in string, k, samples int) string {
	name := filepath.Base(in)
	if i := strings.IndexByte(name, '.'); i > 0 {
		name = name[:i]
	}
	if samples > 1 {
		name = fmt.Sprintf("%s_%d", name, k)
	}
	return filepath.Join(dir, name+".png")
}

// generatorDevice is where the official script's generator lives: the
// accelerator when there is one.
func generatorDevice(dev torch.Device) torch.Device {
	if dev.IsCUDA() {
		return dev
	}
	return torch.CPU
}
