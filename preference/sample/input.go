package sample

import (
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/dp2osr/dp2o/imageio"
)

// Input is one LR image of a candidate set: its id (the file's base name
// without extension), its file, its HR image (for the full-reference
// metrics; may be empty) and its prompt when given (empty: the prompter
// decides).
type Input struct {
	ID     string `json:"id"`
	LR     string `json:"lr"`
	HR     string `json:"hr,omitempty"`
	Prompt string `json:"prompt,omitempty"`
}

// Stem is a file's base name without its extension.
func Stem(path string) string {
	b := filepath.Base(path)
	return strings.TrimSuffix(b, filepath.Ext(b))
}

// ListInputs lists the images of lrDir (sorted) and pairs each with the
// image of hrDir that has the same stem; hrDir may be empty (no HR). An LR
// without its HR, or two files with one stem, is an error naming them.
func ListInputs(lrDir, hrDir string) ([]Input, error) {
	paths, err := imageio.ListImages(lrDir)
	if err != nil {
		return nil, fmt.Errorf("sample: %w", err)
	}
	if len(paths) == 0 {
		return nil, fmt.Errorf("sample: %s: no images", lrDir)
	}
	var hr map[string]string
	if hrDir != "" {
		hs, err := imageio.ListImages(hrDir)
		if err != nil {
			return nil, fmt.Errorf("sample: %w", err)
		}
		hr = map[string]string{}
		for _, h := range hs {
			if old, dup := hr[Stem(h)]; dup {
				return nil, fmt.Errorf("sample: %s and %s have the same name", old, h)
			}
			hr[Stem(h)] = h
		}
	}
	var ins []Input
	seen := map[string]string{}
	var missing []string
	for _, p := range paths {
		id := Stem(p)
		if old, dup := seen[id]; dup {
			return nil, fmt.Errorf("sample: %s and %s have the same name", old, p)
		}
		seen[id] = p
		in := Input{ID: id, LR: p}
		if hr != nil {
			h, ok := hr[id]
			if !ok {
				missing = append(missing, filepath.Base(p))
				continue
			}
			in.HR = h
		}
		ins = append(ins, in)
	}
	if len(missing) > 0 {
		return nil, fmt.Errorf("sample: %d LR images without an HR image of the same name in %s: %s", len(missing), hrDir, preview(missing))
	}
	sort.Slice(ins, func(i, j int) bool { return ins[i].ID < ins[j].ID })
	return ins, nil
}

// DataDirInputs lists the inputs of a folder made by examples/degrade:
// dir/lr paired with dir/hr.
func DataDirInputs(dir string) ([]Input, error) {
	lr, hr := filepath.Join(dir, "lr"), filepath.Join(dir, "hr")
	if _, err := os.Stat(lr); err != nil {
		return nil, fmt.Errorf("sample: %s is not a degrade output folder (no lr/): %w", dir, err)
	}
	if _, err := os.Stat(hr); err != nil {
		hr = ""
	}
	return ListInputs(lr, hr)
}

// preview lists up to 5 names and how many more there are.
func preview(names []string) string {
	if len(names) <= 5 {
		return strings.Join(names, ", ")
	}
	return fmt.Sprintf("%s and %d more", strings.Join(names[:5], ", "), len(names)-5)
}
