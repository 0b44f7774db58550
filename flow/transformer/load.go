package transformer

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/dp2osr/dp2o/torch"
	"github.com/dp2osr/dp2o/torch/nn"
)

// WeightsFile is the weights file of a diffusers model folder.
const WeightsFile = "diffusion_pytorch_model.safetensors"

// weightsPath returns dir/WeightsFile, or its sharded .index.json when only
// that exists.
func weightsPath(dir string) (string, error) {
	path := filepath.Join(dir, WeightsFile)
	if _, err := os.Stat(path); err == nil {
		return path, nil
	} else if !errors.Is(err, os.ErrNotExist) {
		return "", err
	}
	if _, err := os.Stat(path + ".index.json"); err == nil {
		return path + ".index.json", nil
	}
	return "", fmt.Errorf("%s: no %s nor %s.index.json", dir, WeightsFile, WeightsFile)
}

// LoadFlux reads a diffusers FluxTransformer2DModel folder (the transformer/
// folder of a FLUX.1 checkpoint): config.json and the weights, one file or
// shards through their index, memory-mapped and converted tensor by tensor
// to dtype on dev.
func LoadFlux(dir string, dtype torch.DType, dev torch.Device) (*Flux, error) {
	cfg, err := LoadConfig(filepath.Join(dir, "config.json"))
	if err != nil {
		return nil, err
	}
	path, err := weightsPath(dir)
	if err != nil {
		return nil, fmt.Errorf("flux transformer: %w", err)
	}
	return LoadFluxFile(cfg, path, dtype, dev)
}

// LoadFluxFile reads the transformer of cfg from a safetensors file or a
// sharded .index.json.
func LoadFluxFile(cfg Config, path string, dtype torch.DType, dev torch.Device) (*Flux, error) {
	f, err := nn.LoadFile(path, func(src nn.Source) (*Flux, error) { return FromSource(src, cfg, dtype, dev) })
	if err != nil {
		return nil, fmt.Errorf("flux transformer: %w", err)
	}
	return f, nil
}

// bflPrefixes are the top-level names of Black Forest Labs' original
// checkpoints (flux1-dev.safetensors, x-flux ControlNets), which this
// package does not convert.
var bflPrefixes = []string{"double_blocks.", "single_blocks.", "img_in.", "txt_in.", "time_in.", "vector_in.", "guidance_in.", "final_layer."}

// checkLayout rejects a checkpoint in the original (non-diffusers) key
// layout with a message that says so, instead of listing every key.
func checkLayout(src nn.Source) error {
	for _, k := range src.Names() {
		k = strings.TrimPrefix(k, "model.diffusion_model.")
		for _, p := range bflPrefixes {
			if strings.HasPrefix(k, p) {
				return fmt.Errorf("%w: key %q is in the original FLUX (BFL) layout; convert the checkpoint to diffusers' names", nn.ErrWeights, k)
			}
		}
	}
	return nil
}
