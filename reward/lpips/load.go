package lpips

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"

	"github.com/dp2osr/dp2o/torch"
	"github.com/dp2osr/dp2o/torch/nn"
)

// Published file names: the heads of pyiqa's weights repository and
// torchvision's ImageNet backbones.
var publishedFiles = map[Net]struct{ heads, backbone []string }{
	Alex: {
		heads:    []string{"LPIPS_v0.1_alex-df73285e.pth", "LPIPS_v0.1_alex*.pth"},
		backbone: []string{"alexnet-owt-7be5be79.pth", "alexnet-owt-*.pth", "alexnet*.pth"},
	},
	VGG: {
		heads:    []string{"LPIPS_v0.1_vgg-a78928a0.pth", "LPIPS_v0.1_vgg*.pth"},
		backbone: []string{"vgg16-397923af.pth", "vgg16-*.pth"},
	},
}

// FromSource builds the model from src in the layout of pyiqa's LPIPS state
// dict ("net.slice<k>.<index>.weight", "lin<k>.model.1.weight",
// "scaling_layer.shift"/"scale"; the "lins.<k>" aliases are accepted and
// ignored). Every other key is an error. The model owns its weights; src
// stays open.
func FromSource(src nn.Source, net Net, dtype torch.DType, dev torch.Device) (*Model, error) {
	spec, err := specOf(net)
	if err != nil {
		return nil, err
	}
	r, err := fromPyiqaLayout(src, spec)
	if err != nil {
		return nil, err
	}
	return build(r, net, dtype, dev)
}

// Load builds the model from the published checkpoints. path is either a
// directory holding the LPIPS heads of pyiqa's weights repository
// (LPIPS_v0.1_alex-df73285e.pth or LPIPS_v0.1_vgg-a78928a0.pth) and
// torchvision's ImageNet backbone (alexnet-owt-7be5be79.pth or
// vgg16-397923af.pth; the classifier is ignored), or one .pth file with a
// whole pyiqa LPIPS state dict (backbone included).
func Load(path string, net Net, dtype torch.DType, dev torch.Device) (*Model, error) {
	spec, err := specOf(net)
	if err != nil {
		return nil, err
	}
	st, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("lpips: %w", err)
	}
	if !st.IsDir() {
		sd, err := nn.LoadPth(path)
		if err != nil {
			return nil, fmt.Errorf("lpips: %w", err)
		}
		defer sd.Close()
		m, err := FromSource(sd, net, dtype, dev)
		if err != nil {
			return nil, fmt.Errorf("lpips: %s: %w", path, err)
		}
		return m, nil
	}
	files := publishedFiles[net]
	headsPath, err := findFile(path, files.heads)
	if err != nil {
		return nil, err
	}
	backbonePath, err := findFile(path, files.backbone)
	if err != nil {
		return nil, err
	}
	heads, err := nn.LoadPth(headsPath)
	if err != nil {
		return nil, fmt.Errorf("lpips: %w", err)
	}
	defer heads.Close()
	bb, err := nn.LoadPth(backbonePath)
	if err != nil {
		return nil, fmt.Errorf("lpips: %w", err)
	}
	defer bb.Close()
	r, err := fromPublished(heads, bb, spec)
	if err != nil {
		return nil, fmt.Errorf("lpips: %s + %s: %w", headsPath, backbonePath, err)
	}
	m, err := build(r, net, dtype, dev)
	if err != nil {
		return nil, fmt.Errorf("lpips: %s + %s: %w", headsPath, backbonePath, err)
	}
	return m, nil
}

func build(src nn.Source, net Net, dtype torch.DType, dev torch.Device) (*Model, error) {
	m, p, err := nn.Build(src, dtype, dev, func(b *nn.Builder) (*Model, error) { return New(b, net) })
	if err != nil {
		return nil, err
	}
	m.Params = p
	return m, nil
}

// findFile returns the first file of dir matching one of the patterns.
func findFile(dir string, patterns []string) (string, error) {
	for _, p := range patterns {
		ms, err := filepath.Glob(filepath.Join(dir, p))
		if err != nil {
			return "", err
		}
		sort.Strings(ms)
		if len(ms) > 0 {
			return ms[0], nil
		}
	}
	return "", fmt.Errorf("lpips: %s: no %s (published checkpoint)", dir, patterns[0])
}

var sliceKey = regexp.MustCompile(`^net\.slice(\d+)\.(\d+)\.(.+)$`)

// fromPyiqaLayout maps pyiqa's keys onto the canonical ones.
func fromPyiqaLayout(src nn.Source, spec netSpec) (*renamed, error) {
	r := newRenamed()
	var bad []string
	for _, k := range src.Names() {
		switch {
		case strings.HasPrefix(k, "lins."):
			continue // alias of lin<k>
		case strings.HasPrefix(k, "net."):
			m := sliceKey.FindStringSubmatch(k)
			if m == nil {
				bad = append(bad, k)
				continue
			}
			sl, _ := strconv.Atoi(m[1])
			idx, _ := strconv.Atoi(m[2])
			if spec.sliceOf(idx) != sl {
				bad = append(bad, k)
				continue
			}
			r.add("features."+m[2]+"."+m[3], src, k)
		default:
			r.add(k, src, k)
		}
	}
	if len(bad) > 0 {
		return nil, fmt.Errorf("%w: backbone keys outside pyiqa's slices: %s", nn.ErrWeights, strings.Join(bad, ", "))
	}
	return r, nil
}

// fromPublished merges the heads file (lin<k>.model.1.weight) and a
// torchvision checkpoint (features.<index>.*; classifier.* ignored).
func fromPublished(heads, bb nn.Source, spec netSpec) (*renamed, error) {
	r := newRenamed()
	for _, k := range heads.Names() {
		if strings.HasPrefix(k, "lins.") {
			continue
		}
		r.add(k, heads, k)
	}
	found := false
	for _, k := range bb.Names() {
		if strings.HasPrefix(k, "classifier.") {
			continue
		}
		if strings.HasPrefix(k, "features.") {
			found = true
		}
		if _, dup := r.keys[k]; dup {
			return nil, fmt.Errorf("%w: key %q in both files", nn.ErrWeights, k)
		}
		r.add(k, bb, k)
	}
	if !found {
		return nil, errors.New("the backbone file holds no features.* keys (not a torchvision checkpoint?)")
	}
	return r, nil
}

// renamed is a Source whose keys are other sources' keys under new names.
type renamed struct {
	keys map[string]renamedKey
}

type renamedKey struct {
	src nn.Source
	key string
}

func newRenamed() *renamed { return &renamed{keys: map[string]renamedKey{}} }

func (r *renamed) add(name string, src nn.Source, key string) {
	r.keys[name] = renamedKey{src, key}
}

// Names lists the new names, sorted.
func (r *renamed) Names() []string {
	ns := make([]string, 0, len(r.keys))
	for n := range r.keys {
		ns = append(ns, n)
	}
	sort.Strings(ns)
	return ns
}

// Meta is the underlying key's.
func (r *renamed) Meta(name string) ([]int64, torch.DType, bool) {
	k, ok := r.keys[name]
	if !ok {
		return nil, 0, false
	}
	return k.src.Meta(k.key)
}

// Load loads the underlying key.
func (r *renamed) Load(name string) (*torch.Tensor, error) {
	k, ok := r.keys[name]
	if !ok {
		return nil, fmt.Errorf("no tensor %q", name)
	}
	return k.src.Load(k.key)
}

// Close leaves the underlying sources open (their owners close them).
func (r *renamed) Close() error { return nil }
