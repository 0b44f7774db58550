package diffusion

import (
	"context"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"strings"

	"github.com/dp2osr/dp2o/hub"
	"github.com/dp2osr/dp2o/torch/nn"
)

// sd2Components are the model folders of a stable-diffusion-2 repository
// and the library layout of their weights.
var sd2Components = []struct {
	name    string
	weights nn.WeightFiles
}{
	{"text_encoder", nn.TransformersWeights},
	{"unet", nn.DiffusersWeights},
	{"vae", nn.DiffusersWeights},
}

// sd2Files are the other files the pipeline reads: every file of
// tokenizer/, the scheduler's and models' configs, model_index.json.
func sd2Files(files []string) (need []string) {
	for _, f := range files {
		switch {
		case f == "model_index.json", f == "scheduler/scheduler_config.json",
			strings.HasPrefix(f, "tokenizer/"):
			need = append(need, f)
		}
	}
	need = append(need, "scheduler/scheduler_config.json")
	for _, c := range sd2Components {
		need = append(need, c.name+"/config.json")
	}
	return need
}

// FetchSD2 resolves a stable-diffusion-2 model id (repo at revision) to
// its snapshot folder in the Hugging Face cache, downloading only the files
// the pipeline reads: tokenizer/, the scheduler and model configs, and for
// each model folder the one weights file diffusers would load (the variant
// where the folder has variant files, safetensors before .bin, every shard
// of a sharded index). A local folder is returned as it is.
func FetchSD2(ctx context.Context, c *hub.Client, nameOrPath, revision, variant string) (string, error) {
	if hub.IsLocal(nameOrPath) {
		return nameOrPath, nil
	}
	if looksLikePath(nameOrPath) {
		return "", fmt.Errorf("%s: no such folder", nameOrPath)
	}
	if err := hub.ValidateRepoID(nameOrPath); err != nil {
		return "", fmt.Errorf("%s is neither a folder nor a model id: %w", nameOrPath, err)
	}
	commit, files, err := c.RepoFiles(ctx, nameOrPath, revision)
	if err != nil {
		return "", fmt.Errorf("no local folder %s; as a model id: %w", nameOrPath, err)
	}
	need := sd2Files(files)
	for _, comp := range sd2Components {
		w, err := pickWeights(files, comp.name, comp.weights, variant)
		if err != nil {
			if c.Offline {
				err = fmt.Errorf("%w: %w", hub.ErrOffline, err)
			}
			return "", fmt.Errorf("%s@%s: %w", nameOrPath, revision, err)
		}
		need = append(need, w)
	}
	if err := fetchAll(ctx, c, nameOrPath, commit, need); err != nil {
		return "", err
	}
	return c.SnapshotDir(nameOrPath, commit), nil
}

// pickWeights chooses the weights file of folder dir among the repository
// files: the variant's when the folder has variant files (diffusers'
// pipeline rule), else the regular one.
func pickWeights(files []string, dir string, w nn.WeightFiles, variant string) (string, error) {
	prefix := ""
	if dir != "" {
		prefix = dir + "/"
	}
	in := map[string]bool{}
	var names []string
	for _, f := range files {
		if d, name := path.Split(f); d == prefix {
			in[name] = true
			names = append(names, name)
		}
	}
	if !nn.HasVariant(names, variant) {
		variant = ""
	}
	name, ok := w.Pick(variant, func(n string) bool { return in[n] })
	if !ok {
		return "", fmt.Errorf("%s: no weights file: looked for %s", prefix+"*", strings.Join(w.Candidates(variant), ", "))
	}
	return path.Join(dir, name), nil
}

// fetchAll downloads files (and the shards of any .json index among the
// weights) at commit.
func fetchAll(ctx context.Context, c *hub.Client, repo, commit string, files []string) error {
	seen := map[string]bool{}
	for len(files) > 0 {
		f := files[0]
		files = files[1:]
		if seen[f] {
			continue
		}
		seen[f] = true
		p, err := c.Download(ctx, repo, commit, f)
		if err != nil {
			return err
		}
		if strings.HasSuffix(f, ".json") && strings.Contains(path.Base(f), ".index.") {
			shards, err := nn.IndexShards(p)
			if err != nil {
				return err
			}
			for _, s := range shards {
				files = append(files, path.Join(path.Dir(f), filepath.ToSlash(s)))
			}
		}
	}
	return nil
}

// FetchControlNet resolves a ControlNet given as a local file or folder,
// a model id of a diffusers ControlNet repository ("org/name", whose
// config.json and weights are fetched), or a file inside a repository
// ("org/name/dp2o-sd2/model.safetensors", fetched with the config.json
// beside it when the repository has one). It returns the local path of
// the weights file, with the config.json (if any) beside it.
func FetchControlNet(ctx context.Context, c *hub.Client, nameOrPath, revision, variant string) (string, error) {
	if hub.IsLocal(nameOrPath) {
		st, err := os.Stat(nameOrPath)
		if err != nil || !st.IsDir() {
			return nameOrPath, err
		}
		names, err := dirNames(nameOrPath)
		if err != nil {
			return "", err
		}
		if !nn.HasVariant(names, variant) {
			variant = ""
		}
		return nn.FindWeights(nameOrPath, nn.DiffusersWeights, variant)
	}
	if looksLikePath(nameOrPath) {
		_, err := os.Stat(nameOrPath)
		return "", err
	}
	parts := strings.Split(nameOrPath, "/")
	repo, file := nameOrPath, ""
	if len(parts) > 2 {
		repo, file = parts[0]+"/"+parts[1], strings.Join(parts[2:], "/")
	}
	if err := hub.ValidateRepoID(repo); err != nil {
		return "", fmt.Errorf("%s is neither a local path nor a model id (org/name or org/name/path/in/repo): %w", nameOrPath, err)
	}
	commit, files, err := c.RepoFiles(ctx, repo, revision)
	if err != nil {
		return "", fmt.Errorf("no local file or folder %s; as a model id: %w", nameOrPath, err)
	}
	dir := path.Dir(file)
	if file == "" {
		if file, err = pickWeights(files, "", nn.DiffusersWeights, variant); err != nil {
			return "", fmt.Errorf("%s: %w", nameOrPath, err)
		}
		dir = "."
	}
	need := []string{file}
	for _, f := range files {
		if f == path.Join(dir, "config.json") {
			need = append(need, f)
		}
	}
	if err := fetchAll(ctx, c, repo, commit, need); err != nil {
		return "", err
	}
	return filepath.Join(c.SnapshotDir(repo, commit), filepath.FromSlash(file)), nil
}

func dirNames(dir string) ([]string, error) {
	es, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	var names []string
	for _, e := range es {
		names = append(names, e.Name())
	}
	return names, nil
}

// componentVariant is variant when the component folder holds variant
// files, "" otherwise (diffusers' pipeline rule).
func componentVariant(dir, variant string) string {
	if variant == "" {
		return ""
	}
	names, err := dirNames(dir)
	if err != nil || !nn.HasVariant(names, variant) {
		return ""
	}
	return variant
}

// looksLikePath tells a local path that does not exist from a model id.
func looksLikePath(s string) bool {
	return filepath.IsAbs(s) || strings.HasPrefix(s, ".") || strings.HasPrefix(s, "~") ||
		strings.ContainsRune(s, filepath.Separator) && filepath.Separator != '/'
}
