// Package reward holds the image-quality scorers of DP²O-SR's hybrid
// perceptual reward (ports of pyiqa's metrics), PSNR and SSIM, and the
// reward itself: per-group min-max normalised metrics, averaged in a
// full-reference half and a no-reference half.
//
// Each metric implements Scorer and registers itself under pyiqa's metric
// name from the init function of its package (reward/lpips, reward/topiq,
// ...); a program imports the packages it needs, blank if it only opens
// them by name:
//
//	import _ "github.com/dp2osr/dp2o/reward/lpips"
//
//	s, err := reward.Open("lpips", reward.OpenOptions{Weights: "/models/iqa"})
package reward

import (
	"context"
	"fmt"
	"sort"
	"sync"

	"github.com/dp2osr/dp2o/torch"
	"github.com/dp2osr/dp2o/torch/nn"
)

// Scorer scores images with one IQA metric.
type Scorer interface {
	Name() string         // pyiqa's metric name, e.g. "lpips", "topiq_nr"
	FullReference() bool  // FR metrics need the reference image
	HigherIsBetter() bool // pyiqa's lower_better negated
	// Score scores a batch: img (and ref for FR) are (N,3,H,W) float32 RGB in [0,1] on the scorer's device;
	// it returns N scores (float64). The scorer applies its own preprocessing (resize/crop/normalise) as pyiqa does.
	Score(ctx context.Context, img, ref *torch.Tensor) ([]float64, error)
	Close() error
}

// OpenOptions says where a scorer takes its weights from and where it runs.
type OpenOptions struct {
	// Weights is the published checkpoint: a file, or a directory holding the
	// metric's published file(s) under their published names (e.g. LPIPS
	// needs its heads and the torchvision backbone). Each metric documents
	// the names it looks for. Empty for metrics without weights (psnr, ssim).
	Weights string
	// Source, when not nil, gives the weights directly in the layout of the
	// pyiqa module's own state dict (the keys the fixture manifests list),
	// instead of Weights. The scorer copies what it needs and does not close
	// Source.
	Source nn.Source
	// Device is where the scorer runs; the zero value is the CPU (Open
	// passes it on as torch.CPU).
	Device torch.Device
	// DType is the compute dtype of the network; the zero value (Uint8,
	// not a floating type) means float32.
	DType torch.DType
	// Fast lets a scorer use kernels with another accumulation order than
	// pyiqa's where that is faster (e.g. channels-last convolutions on the
	// CPU): scores then agree with pyiqa to float32 rounding instead of bit
	// for bit. Scorers without such a path ignore it.
	Fast bool
}

// ComputeDType returns o.DType, or float32 when o.DType is not a floating
// type (the zero value).
func (o OpenOptions) ComputeDType() torch.DType {
	if !o.DType.IsFloat() {
		return torch.Float32
	}
	return o.DType
}

// OpenFunc opens a scorer.
type OpenFunc func(opts OpenOptions) (Scorer, error)

var (
	registryMu sync.RWMutex
	registry   = map[string]OpenFunc{}
)

// Register makes a metric available to Open under name (pyiqa's metric
// name). It panics if name is registered twice or open is nil: both are
// programming errors in an init function.
func Register(name string, open OpenFunc) {
	registryMu.Lock()
	defer registryMu.Unlock()
	if open == nil {
		panic("reward: Register " + name + " with a nil open function")
	}
	if _, dup := registry[name]; dup {
		panic("reward: metric " + name + " registered twice")
	}
	registry[name] = open
}

// Open opens the metric registered under name.
func Open(name string, opts OpenOptions) (Scorer, error) {
	registryMu.RLock()
	open, ok := registry[name]
	registryMu.RUnlock()
	if !ok {
		return nil, fmt.Errorf("reward: unknown metric %q (registered: %v; is its package imported?)", name, Names())
	}
	if opts.Device.Type == torch.DeviceCPU {
		opts.Device = torch.CPU // the zero value
	}
	s, err := open(opts)
	if err != nil {
		return nil, fmt.Errorf("reward: open %s: %w", name, err)
	}
	return s, nil
}

// Names lists the registered metric names, sorted.
func Names() []string {
	registryMu.RLock()
	defer registryMu.RUnlock()
	ns := make([]string, 0, len(registry))
	for n := range registry {
		ns = append(ns, n)
	}
	sort.Strings(ns)
	return ns
}
