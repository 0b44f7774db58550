package degrade

import (
	"encoding/json"
	"fmt"
	"math"
	"os"
)

// Config holds the parameters of the degradation, under the key names of
// ResShift's YAML configs (the dataset's opts and the degradation block).
// Sample draws a Record from it; only the first-order path is implemented
// (second_order_prob must be 0; the gate is still drawn, as upstream).
type Config struct {
	Name string `json:"name,omitempty"`
	SF   int    `json:"sf"`

	// Blur kernel of stage 1: size from range(3, BlurKernelSize, 2), zero-padded
	// to BlurKernelSize; a sinc with SincProb, else a mixed kernel.
	BlurKernelSize int        `json:"blur_kernel_size"`
	KernelList     []string   `json:"kernel_list"`
	KernelProb     []float64  `json:"kernel_prob"`
	SincProb       float64    `json:"sinc_prob"`
	BlurSigma      [2]float64 `json:"blur_sigma"`
	BetaGRange     [2]float64 `json:"betag_range"`
	BetaPRange     [2]float64 `json:"betap_range"`

	// Second kernel: drawn by the dataset (so that the draw order is the
	// reference's) but unused in first order; BlurKernelSize2 also sizes
	// the final sinc filter and the pulse.
	BlurKernelSize2 int        `json:"blur_kernel_size2"`
	KernelList2     []string   `json:"kernel_list2"`
	KernelProb2     []float64  `json:"kernel_prob2"`
	SincProb2       float64    `json:"sinc_prob2"`
	BlurSigma2      [2]float64 `json:"blur_sigma2"`
	BetaGRange2     [2]float64 `json:"betag_range2"`
	BetaPRange2     [2]float64 `json:"betap_range2"`

	FinalSincProb float64 `json:"final_sinc_prob"`

	// Stage 1.
	ResizeProb        [3]float64 `json:"resize_prob"` // up, down, keep
	ResizeRange       [2]float64 `json:"resize_range"`
	GaussianNoiseProb float64    `json:"gaussian_noise_prob"`
	NoiseRange        [2]float64 `json:"noise_range"`
	PoissonScaleRange [2]float64 `json:"poisson_scale_range"`
	GrayNoiseProb     float64    `json:"gray_noise_prob"`
	JPEGRange         [2]float64 `json:"jpeg_range"`

	SecondOrderProb float64 `json:"second_order_prob"`

	// Final stage: the second JPEG's quality range.
	JPEGRange2 [2]float64 `json:"jpeg_range2"`

	// GTSize is the side of the square HR crops (0: use images as they are).
	GTSize int `json:"gt_size"`
}

// Testing is ResShift's configs/degradation_testing_realesrgan.yaml, the
// reading of DP²O-SR's "first-order degradation pipeline from ResShift"
// that SPEC §7.2 takes as its main guess, with a 512 HR crop (ResShift
// uses 256; DP²O-SR's size is a guess, SPEC §7.2).
func Testing() Config {
	return Config{
		Name: "testing", SF: 4,
		BlurKernelSize: 13, KernelList: append([]string(nil), MixedKernelTypes...),
		KernelProb: []float64{0.6, 0.4, 0, 0, 0, 0}, SincProb: 0.1,
		BlurSigma: [2]float64{0.2, 0.8}, BetaGRange: [2]float64{1.0, 1.5}, BetaPRange: [2]float64{1, 1.2},
		BlurKernelSize2: 7, KernelList2: append([]string(nil), MixedKernelTypes...),
		KernelProb2: []float64{0.6, 0.4, 0, 0, 0, 0}, SincProb2: 0,
		BlurSigma2: [2]float64{0.2, 0.5}, BetaGRange2: [2]float64{0.5, 0.8}, BetaPRange2: [2]float64{1, 1.2},
		FinalSincProb: 0.2,
		ResizeProb:    [3]float64{0.2, 0.7, 0.1}, ResizeRange: [2]float64{0.5, 1.5},
		GaussianNoiseProb: 0.5, NoiseRange: [2]float64{1, 15}, PoissonScaleRange: [2]float64{0.05, 0.3},
		GrayNoiseProb: 0.4, JPEGRange: [2]float64{70, 95},
		SecondOrderProb: 0, JPEGRange2: [2]float64{80, 100},
		GTSize: 512,
	}
}

// TrainFirstOrder is the alternative reading of SPEC §7.2: ResShift's
// training config (configs/realsr_swinunet_realesrgan256.yaml) with its
// second stage switched off (second_order_prob 0), 512 HR crops.
func TrainFirstOrder() Config {
	return Config{
		Name: "train_first_order", SF: 4,
		BlurKernelSize: 21, KernelList: append([]string(nil), MixedKernelTypes...),
		KernelProb: []float64{0.45, 0.25, 0.12, 0.03, 0.12, 0.03}, SincProb: 0.1,
		BlurSigma: [2]float64{0.2, 3.0}, BetaGRange: [2]float64{0.5, 4.0}, BetaPRange: [2]float64{1, 2.0},
		BlurKernelSize2: 15, KernelList2: append([]string(nil), MixedKernelTypes...),
		KernelProb2: []float64{0.45, 0.25, 0.12, 0.03, 0.12, 0.03}, SincProb2: 0.1,
		BlurSigma2: [2]float64{0.2, 1.5}, BetaGRange2: [2]float64{0.5, 4.0}, BetaPRange2: [2]float64{1, 2.0},
		FinalSincProb: 0.8,
		ResizeProb:    [3]float64{0.2, 0.7, 0.1}, ResizeRange: [2]float64{0.15, 1.5},
		GaussianNoiseProb: 0.5, NoiseRange: [2]float64{1, 30}, PoissonScaleRange: [2]float64{0.05, 3.0},
		GrayNoiseProb: 0.4, JPEGRange: [2]float64{30, 95},
		SecondOrderProb: 0, JPEGRange2: [2]float64{30, 95},
		GTSize: 512,
	}
}

// Named returns a built-in config by name: "testing" (the default) or
// "train_first_order".
func Named(name string) (Config, error) {
	switch name {
	case "", "testing":
		return Testing(), nil
	case "train_first_order":
		return TrainFirstOrder(), nil
	}
	return Config{}, fmt.Errorf("degrade: unknown config %q (want testing or train_first_order, or a JSON file)", name)
}

// LoadConfig reads a Config from a JSON file (ResShift's key names). Keys it
// does not set keep the values of the built-in config named by its "name"
// key ("testing" when absent).
func LoadConfig(path string) (Config, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return Config{}, fmt.Errorf("degrade: config: %w", err)
	}
	var head struct {
		Name string `json:"name"`
	}
	if err := json.Unmarshal(b, &head); err != nil {
		return Config{}, fmt.Errorf("degrade: config %s: %w", path, err)
	}
	c, err := Named(head.Name)
	if err != nil {
		return Config{}, fmt.Errorf("degrade: config %s: %w", path, err)
	}
	if err := json.Unmarshal(b, &c); err != nil {
		return Config{}, fmt.Errorf("degrade: config %s: %w", path, err)
	}
	if err := c.Validate(); err != nil {
		return Config{}, fmt.Errorf("degrade: config %s: %w", path, err)
	}
	return c, nil
}

func checkProb(what string, p float64) error {
	if !(p >= 0 && p <= 1) {
		return fmt.Errorf("%s %v is not a probability", what, p)
	}
	return nil
}

func checkWeights(what string, list []string, w []float64) error {
	if len(list) == 0 || len(list) != len(w) {
		return fmt.Errorf("%s: %d kernel types but %d weights", what, len(list), len(w))
	}
	sum := 0.0
	for i, v := range w {
		if !(v >= 0) || math.IsInf(v, 0) {
			return fmt.Errorf("%s: weight %v of %q is not a non-negative number", what, v, list[i])
		}
		sum += v
		known := false
		for _, k := range MixedKernelTypes {
			known = known || k == list[i]
		}
		if !known {
			return fmt.Errorf("%s: unknown kernel type %q", what, list[i])
		}
	}
	if sum <= 0 {
		return fmt.Errorf("%s: weights sum to %v", what, sum)
	}
	return nil
}

func checkPosRange(what string, r [2]float64) error {
	if err := checkRange(what, r); err != nil {
		return err
	}
	if r[0] <= 0 {
		return fmt.Errorf("%s %v must be positive", what, r)
	}
	return nil
}

// Validate checks the config and says what is wrong.
func (c Config) Validate() error {
	if c.SF < 1 {
		return fmt.Errorf("degrade: config: sf %d must be positive", c.SF)
	}
	if c.BlurKernelSize < 5 || c.BlurKernelSize%2 != 1 {
		return fmt.Errorf("degrade: config: blur_kernel_size %d must be odd and at least 5", c.BlurKernelSize)
	}
	if c.BlurKernelSize2 < 5 || c.BlurKernelSize2%2 != 1 {
		return fmt.Errorf("degrade: config: blur_kernel_size2 %d must be odd and at least 5", c.BlurKernelSize2)
	}
	if err := checkWeights("kernel_prob", c.KernelList, c.KernelProb); err != nil {
		return fmt.Errorf("degrade: config: %w", err)
	}
	if err := checkWeights("kernel_prob2", c.KernelList2, c.KernelProb2); err != nil {
		return fmt.Errorf("degrade: config: %w", err)
	}
	for _, p := range []struct {
		what string
		v    float64
	}{{"sinc_prob", c.SincProb}, {"sinc_prob2", c.SincProb2}, {"final_sinc_prob", c.FinalSincProb},
		{"gaussian_noise_prob", c.GaussianNoiseProb}, {"gray_noise_prob", c.GrayNoiseProb}, {"second_order_prob", c.SecondOrderProb}} {
		if err := checkProb(p.what, p.v); err != nil {
			return fmt.Errorf("degrade: config: %w", err)
		}
	}
	if c.SecondOrderProb != 0 {
		return fmt.Errorf("degrade: config: second_order_prob %v: only the first-order degradation is implemented (set it to 0)", c.SecondOrderProb)
	}
	for _, r := range []struct {
		what string
		v    [2]float64
	}{{"blur_sigma", c.BlurSigma}, {"blur_sigma2", c.BlurSigma2}, {"betag_range", c.BetaGRange}, {"betap_range", c.BetaPRange},
		{"betag_range2", c.BetaGRange2}, {"betap_range2", c.BetaPRange2}, {"noise_range", c.NoiseRange},
		{"poisson_scale_range", c.PoissonScaleRange}} {
		if err := checkPosRange(r.what, r.v); err != nil {
			return fmt.Errorf("degrade: config: %w", err)
		}
	}
	if c.ResizeRange[0] <= 0 || c.ResizeRange[0] > 1 || c.ResizeRange[1] < 1 || math.IsInf(c.ResizeRange[1], 0) {
		return fmt.Errorf("degrade: config: resize_range %v must be [lo ≤ 1, hi ≥ 1] with lo > 0", c.ResizeRange)
	}
	psum := 0.0
	for _, p := range c.ResizeProb {
		if !(p >= 0) {
			return fmt.Errorf("degrade: config: resize_prob %v has a negative weight", c.ResizeProb)
		}
		psum += p
	}
	if psum <= 0 {
		return fmt.Errorf("degrade: config: resize_prob %v sums to 0", c.ResizeProb)
	}
	if err := checkJPEGRange(c.JPEGRange); err != nil {
		return fmt.Errorf("degrade: config: %w", err)
	}
	if err := checkJPEGRange(c.JPEGRange2); err != nil {
		return fmt.Errorf("degrade: config: jpeg_range2: %w", err)
	}
	if c.GTSize < 0 || (c.GTSize > 0 && c.GTSize%c.SF != 0) {
		return fmt.Errorf("degrade: config: gt_size %d must be 0 or a positive multiple of sf %d", c.GTSize, c.SF)
	}
	return nil
}
