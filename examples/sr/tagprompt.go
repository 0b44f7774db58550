package main

import (
	"fmt"

	"github.com/urfave/cli/v2"

	"github.com/dp2osr/dp2o/imageio"
	"github.com/dp2osr/dp2o/tagger"
	"github.com/dp2osr/dp2o/torch"
)

// prompter gives each image its prompt: --prompt when it is set, otherwise
// the RAM + DAPE tags of the original image (--ram_path, --dape_path), as
// the official scripts prompt. With neither, the prompt is empty.
type prompter struct {
	fixed  string
	tagger *tagger.Tagger
}

// newPrompter loads the tagger when the prompt comes from it.
func newPrompter(c *cli.Context, dev torch.Device) (*prompter, error) {
	p := &prompter{fixed: c.String("prompt")}
	ram := c.String("ram_path")
	if p.fixed != "" || ram == "" {
		if p.fixed == "" {
			fmt.Println("note: no --prompt and no --ram_path: the images are processed with an empty prompt (the official scripts prompt with the RAM/DAPE tags: give --ram_path and --dape_path)")
		}
		return p, nil
	}
	// RAM runs in float32 outside autocast, on the pipeline's device.
	t, err := tagger.Load(ram, c.String("dape_path"), tagger.Options{Device: dev})
	if err != nil {
		return nil, fmt.Errorf("tagger: %w", err)
	}
	p.tagger = t
	return p, nil
}

// prompt returns the prompt of img (the image as loaded, before any resize).
func (p *prompter) prompt(img *imageio.RGB8) (string, error) {
	if p.tagger == nil {
		return p.fixed, nil
	}
	r, err := p.tagger.Tag(img)
	if err != nil {
		return "", fmt.Errorf("tagger: %w", err)
	}
	return r.Prompt, nil
}

// Close frees the tagger.
func (p *prompter) Close() {
	if p != nil && p.tagger != nil {
		p.tagger.Close()
	}
}
