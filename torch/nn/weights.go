package nn

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/dp2osr/dp2o/torch/pickle"
	"github.com/dp2osr/dp2o/torch/safetensors"
)

// WeightFiles names the checkpoint files a library writes into a model
// folder and the order its from_pretrained looks for them in.
type WeightFiles struct {
	// Library names the convention in error messages.
	Library string
	// Safetensors and Pickle are the single-file names
	// ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin").
	Safetensors, Pickle string
	// IndexFirst: the sharded safetensors index is looked for before the
	// single file (diffusers); otherwise after it (transformers).
	IndexFirst bool
	// PickleIndex: a sharded .bin index is accepted too (transformers).
	PickleIndex bool
}

var (
	// DiffusersWeights is the layout of diffusers' ModelMixin (UNet, VAE,
	// ControlNet): with use_safetensors unset, from_pretrained (0.32) takes
	// the sharded index diffusion_pytorch_model.safetensors.index.json
	// (with a variant, .index.<variant>.json, then the legacy
	// .<variant>.index.json), then diffusion_pytorch_model[.<variant>].safetensors,
	// then diffusion_pytorch_model[.<variant>].bin.
	DiffusersWeights = WeightFiles{Library: "diffusers", Safetensors: "diffusion_pytorch_model.safetensors",
		Pickle: "diffusion_pytorch_model.bin", IndexFirst: true}
	// TransformersWeights is the layout of transformers' PreTrainedModel
	// (the CLIP text encoder): model[.<variant>].safetensors, then
	// model.safetensors.index[.<variant>].json, then
	// pytorch_model[.<variant>].bin, then pytorch_model.bin.index[.<variant>].json.
	TransformersWeights = WeightFiles{Library: "transformers", Safetensors: "model.safetensors",
		Pickle: "pytorch_model.bin", PickleIndex: true}
)

// AddVariant inserts variant before the last dot-separated part of a file
// name, as diffusers' and transformers' _add_variant:
// "model.safetensors" → "model.fp16.safetensors",
// "model.safetensors.index.json" → "model.safetensors.index.fp16.json".
func AddVariant(name, variant string) string {
	if variant == "" {
		return name
	}
	i := strings.LastIndexByte(name, '.')
	if i < 0 {
		return name + "." + variant
	}
	return name[:i] + "." + variant + name[i:]
}

// Candidates lists the file names looked for, in the library's order of
// precedence, for variant ("" for none).
func (w WeightFiles) Candidates(variant string) []string {
	stIndex := AddVariant(w.Safetensors+".index.json", variant)
	var c []string
	if w.IndexFirst {
		c = append(c, stIndex)
		if variant != "" {
			// diffusers' _fetch_index_file_legacy
			c = append(c, w.Safetensors+"."+variant+".index.json")
		}
		c = append(c, AddVariant(w.Safetensors, variant))
	} else {
		c = append(c, AddVariant(w.Safetensors, variant), stIndex)
	}
	c = append(c, AddVariant(w.Pickle, variant))
	if w.PickleIndex {
		c = append(c, AddVariant(w.Pickle+".index.json", variant))
	}
	return c
}

// Pick returns the first candidate of variant for which exists is true.
func (w WeightFiles) Pick(variant string, exists func(name string) bool) (string, bool) {
	for _, c := range w.Candidates(variant) {
		if exists(c) {
			return c, true
		}
	}
	return "", false
}

// HasVariant reports whether a component folder's file names hold a file
// of variant, as diffusers' pipeline loader decides whether to pass the
// variant to a component (_identify_model_variants: the second
// dot-separated part of a name starts with the variant). Components
// without variant files load their regular weights.
func HasVariant(names []string, variant string) bool {
	if variant == "" {
		return false
	}
	for _, n := range names {
		if parts := strings.Split(filepath.Base(n), "."); len(parts) > 1 && strings.HasPrefix(parts[1], variant) {
			return true
		}
	}
	return false
}

// FindWeights returns the checkpoint file of model folder dir that the
// library would load for variant ("" for none). When none is there the
// error names the folder and every file looked for.
func FindWeights(dir string, w WeightFiles, variant string) (string, error) {
	name, ok := w.Pick(variant, func(n string) bool {
		st, err := os.Stat(filepath.Join(dir, n))
		return err == nil && st.Mode().IsRegular()
	})
	if !ok {
		msg := fmt.Sprintf("%s: no weights file: looked for %s", dir, strings.Join(w.Candidates(variant), ", "))
		if variant != "" {
			if alt, ok := w.Pick("", func(n string) bool { _, err := os.Stat(filepath.Join(dir, n)); return err == nil }); ok {
				msg += fmt.Sprintf(" (there is %s: load it without the %q variant)", alt, variant)
			}
		}
		return "", fmt.Errorf("%s", msg)
	}
	return filepath.Join(dir, name), nil
}

// IndexShards reads a sharded checkpoint's index file and returns the shard
// file names its weight_map names, sorted, without repeats.
func IndexShards(path string) ([]string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var idx struct {
		WeightMap map[string]string `json:"weight_map"`
	}
	if err := json.Unmarshal(b, &idx); err != nil {
		return nil, fmt.Errorf("%s: index is not valid JSON: %w", path, err)
	}
	if idx.WeightMap == nil {
		return nil, fmt.Errorf("%s: index has no weight_map", path)
	}
	var files []string
	for _, f := range idx.WeightMap {
		if !filepath.IsLocal(f) {
			return nil, fmt.Errorf("%s: shard %q is not a path inside the index's folder", path, f)
		}
		files = append(files, f)
	}
	slices.Sort(files)
	return slices.Compact(files), nil
}

// OpenWeights opens a checkpoint by its file name: a .safetensors file, a
// .json shard index (of safetensors or of .bin shards), or a PyTorch
// pickle checkpoint (.bin, .pth, .pt, .ckpt) read through the allowlisted
// weights-only unpickler. Other names are told apart by their contents.
func OpenWeights(path string) (Source, error) {
	switch {
	case strings.HasSuffix(path, ".safetensors"):
		return OpenSafetensors(path)
	case strings.HasSuffix(path, ".json"):
		shards, err := IndexShards(path)
		if err != nil {
			return nil, err
		}
		if len(shards) > 0 && !strings.HasSuffix(shards[0], ".safetensors") {
			return loadPickleShards(path, shards)
		}
		// By its contents: a variant's index is "….index.fp16.json".
		r, err := safetensors.OpenIndex(path)
		if err != nil {
			return nil, err
		}
		return &SafetensorsSource{r: r, path: path}, nil
	case strings.HasSuffix(path, ".bin"), strings.HasSuffix(path, ".pth"), strings.HasSuffix(path, ".pt"),
		strings.HasSuffix(path, ".ckpt"):
		return LoadPth(path)
	}
	// Another name: a torch.save zip archive starts with a zip header;
	// anything else is read as safetensors (whose errors say what is wrong).
	if f, err := os.Open(path); err == nil {
		var magic [4]byte
		n, _ := f.ReadAt(magic[:], 0)
		f.Close()
		if n == 4 && string(magic[:]) == "PK\x03\x04" {
			return LoadPth(path)
		}
	}
	return OpenSafetensors(path)
}

// loadPickleShards merges the .bin shards of an index into one state dict.
func loadPickleShards(index string, shards []string) (MapSource, error) {
	all := MapSource{}
	for _, s := range shards {
		m, err := LoadPth(filepath.Join(filepath.Dir(index), s), pickle.WithStripPrefix(""))
		if err != nil {
			all.Close()
			return nil, fmt.Errorf("%s: %w", index, err)
		}
		for k, t := range m {
			if _, dup := all[k]; dup {
				m.Close()
				all.Close()
				return nil, fmt.Errorf("%s: tensor %q is in more than one shard", index, k)
			}
			all[k] = t
		}
	}
	return all, nil
}
