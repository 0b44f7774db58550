package flow

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"

	"github.com/dp2osr/dp2o/hub"
)

// FluxPatterns are the files of a FLUX.1 repository the pipeline reads:
// model_index.json and the seven component folders. They leave out what
// FLUX.1-dev also publishes at its root (the Black Forest Labs checkpoints
// flux1-dev.safetensors and ae.safetensors, 24 GB), which diffusers does
// not load either.
var FluxPatterns = []string{
	"model_index.json",
	"scheduler/*",
	"tokenizer/*",
	"tokenizer_2/*",
	"text_encoder/*",
	"text_encoder_2/*",
	"transformer/*",
	"vae/*",
}

// FetchFLUX resolves a FLUX.1 model id ("black-forest-labs/FLUX.1-dev", as
// the official README passes it) at revision to its snapshot folder in the
// Hugging Face cache, downloading what is missing of FluxPatterns (gated
// repositories need HF_TOKEN). A local folder is returned as it is.
func FetchFLUX(ctx context.Context, c *hub.Client, nameOrPath, revision string) (string, error) {
	if hub.IsLocal(nameOrPath) {
		return nameOrPath, nil
	}
	if filepath.IsAbs(nameOrPath) || strings.HasPrefix(nameOrPath, ".") || strings.HasPrefix(nameOrPath, "~") {
		return "", fmt.Errorf("%s: no such folder", nameOrPath)
	}
	if c == nil {
		c = hub.FromEnv()
		c.Progress = nil
	}
	dir, err := c.Resolve(ctx, nameOrPath, revision, FluxPatterns...)
	if err != nil {
		return "", fmt.Errorf("no local folder %s; as a model id: %w", nameOrPath, err)
	}
	return dir, nil
}
