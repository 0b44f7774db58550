// Command tag prints the RAM + DAPE tags of images: the prompt the DP²O-SR
// pipelines give their diffusion model (the tags whose probability beats
// their threshold, in tag-list order, joined with ", ").
//
//	go run ./examples/tag --image_path photos/ \
//	  --ram_path preset/models/ram_swin_large_14m.pth --dape_path preset/models/DAPE.pth
package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"

	"github.com/urfave/cli/v2"

	"github.com/dp2osr/dp2o/imageio"
	"github.com/dp2osr/dp2o/tagger"
	"github.com/dp2osr/dp2o/torch"
)

func main() {
	if err := newApp(os.Stdout).Run(os.Args); err != nil {
		fmt.Fprintln(os.Stderr, "tag:", err)
		os.Exit(1)
	}
}

func newApp(out io.Writer) *cli.App {
	return &cli.App{
		Name:      "tag",
		Usage:     "print the RAM (Swin-L) + DAPE tags of images, the prompt of the DP²O-SR pipelines",
		UsageText: "tag --image_path <image or folder> --ram_path ram_swin_large_14m.pth [--dape_path DAPE.pth]",
		Writer:    out,
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "image_path", Required: true, Usage: "input image or folder (*.png *.jpg *.jpeg *.bmp *.tiff *.webp, sorted)"},
			&cli.StringFlag{Name: "ram_path", Value: "preset/models/ram_swin_large_14m.pth", Usage: "RAM checkpoint (ram_swin_large_14m.pth, or a .safetensors of its checkpoint['model'])"},
			&cli.StringFlag{Name: "dape_path", Value: "preset/models/DAPE.pth", Usage: "DAPE LoRA checkpoint merged into RAM (\"\" for RAM alone)"},
			&cli.StringFlag{Name: "tag_list", Usage: "tag list file (default: the embedded ram_tag_list.txt)"},
			&cli.StringFlag{Name: "thresholds", Usage: "threshold file (default: the embedded ram_tag_list_threshold.txt)"},
			&cli.StringFlag{Name: "device", Value: "auto", Usage: "cpu, cuda, cuda:N or auto (cuda when available)"},
			&cli.IntFlag{Name: "threads", Usage: "libtorch intra-op threads on the CPU (0: libtorch's default)"},
		},
		Action: run,
	}
}

func device(s string) (torch.Device, error) {
	if s == "auto" {
		if torch.CUDAAvailable() {
			return torch.CUDA(0), nil
		}
		return torch.CPU, nil
	}
	d, err := torch.ParseDevice(s)
	if err != nil {
		return torch.Device{}, fmt.Errorf("--device: %w", err)
	}
	if d.IsCUDA() && !torch.CUDAAvailable() {
		return torch.Device{}, fmt.Errorf("--device %s: libtorch sees no CUDA device", s)
	}
	return d, nil
}

func run(c *cli.Context) error {
	dev, err := device(c.String("device"))
	if err != nil {
		return err
	}
	if n := c.Int("threads"); n > 0 {
		torch.SetNumThreads(n)
	}
	if !dev.IsCUDA() && torch.NumThreads() > 1 {
		runtime.GOMAXPROCS(1) // see examples/sr: Go's threads preempt libtorch's OpenMP workers
	}
	inputs, err := imageio.ListImages(c.String("image_path"))
	if err != nil {
		return err
	}
	if len(inputs) == 0 {
		return fmt.Errorf("no images in %s", c.String("image_path"))
	}
	t, err := tagger.Load(c.String("ram_path"), c.String("dape_path"), tagger.Options{
		Device: dev, TagList: c.String("tag_list"), Thresholds: c.String("thresholds")})
	if err != nil {
		return err
	}
	defer t.Close()
	var failed []error
	for _, in := range inputs {
		prompt, err := t.Prompt(in)
		if err != nil {
			fmt.Fprintf(os.Stderr, "%s: %v\n", in, err)
			failed = append(failed, err)
			continue
		}
		fmt.Fprintf(c.App.Writer, "%s: %s\n", filepath.Base(in), prompt)
	}
	if len(failed) > 0 {
		return fmt.Errorf("%d of %d images failed: %w", len(failed), len(inputs), errors.Join(failed...))
	}
	return nil
}
