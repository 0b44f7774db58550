package degrade

import (
	"fmt"
	"math"
)

// Final-stage orders: resize to 1/sf + final sinc filter, then JPEG; or
// JPEG first.
const (
	OrderResizeSincJPEG = "resize_sinc_jpeg"
	OrderJPEGResizeSinc = "jpeg_resize_sinc"
)

// Noise kinds of stage 1.
const (
	NoiseGaussian = "gaussian"
	NoisePoisson  = "poisson"
)

// Resize directions of stage 1.
const (
	ResizeUp   = "up"
	ResizeDown = "down"
	ResizeKeep = "keep"
)

// Record is the parameter record of one degradation: what the sampler drew
// (the dataset-side decisions) and, once Degrade has run, what the chain
// drew from the generator (noise level, grey flag, JPEG qualities). Its JSON
// form is the reference's chain record (fixtures/degrade/chains/<case>.json),
// so a record written by the reference generator loads as it is.
type Record struct {
	Config            string      `json:"config,omitempty"`
	Seed              *uint64     `json:"seed,omitempty"` // the sampler's seed, when the record came from Config.Sample
	SF                int         `json:"sf"`
	Kernel1           KernelSpec  `json:"kernel1"`
	Kernel1PaddedSize int         `json:"kernel1_padded_size"`
	Kernel2Unused     *KernelSpec `json:"kernel2_unused,omitempty"` // drawn by the dataset, unused in first order
	Kernel2PaddedSize int         `json:"kernel2_padded_size,omitempty"`
	SincKernel        KernelSpec  `json:"sinc_kernel"`
	Stage1            Stage1      `json:"stage1"`
	SecondOrder       SecondOrder `json:"second_order"`
	Final             FinalStage  `json:"final"`
}

// Stage1 is the first degradation stage after the blur.
type Stage1 struct {
	Resize      Resize     `json:"resize"`
	Noise       Noise      `json:"noise"`
	JPEGRange   [2]float64 `json:"jpeg_range"`
	JPEGQuality float32    `json:"jpeg_quality,omitempty"` // drawn by the chain
	JPEGFactor  float32    `json:"jpeg_factor,omitempty"`  // drawn by the chain
}

// Resize is the stage-1 random resize.
type Resize struct {
	UpDown  string   `json:"updown"`
	Scale   float64  `json:"scale"` // F.interpolate's scale_factor (1 for keep)
	Mode    string   `json:"mode"`
	OutSize [2]int64 `json:"out_size,omitempty"` // filled by the chain
}

// Noise is the stage-1 noise: its kind and range are sampler decisions, the
// rest is drawn by the chain from the generator.
type Noise struct {
	Kind     string     `json:"kind"`
	UKind    float64    `json:"u_kind,omitempty"`
	Range    [2]float64 `json:"range"` // σ range (Gaussian, in 0–255 units) or scale range (Poisson)
	GrayProb float64    `json:"gray_prob"`
	ULevel   float32    `json:"u_level,omitempty"`
	UGray    float32    `json:"u_gray,omitempty"`
	Level    float32    `json:"level,omitempty"`
	IsGray   float32    `json:"is_gray"`
}

// SecondOrder records the gate of the second stage, which first order never takes.
type SecondOrder struct {
	Prob    float64 `json:"prob"`
	U       float64 `json:"u"`
	Applied bool    `json:"applied"`
}

// FinalStage is the final resize to 1/sf, sinc filter and second JPEG.
type FinalStage struct {
	UOrder      float64    `json:"u_order,omitempty"`
	Order       string     `json:"order"`
	Mode        string     `json:"mode"`
	Size        [2]int64   `json:"size,omitempty"` // (H/sf, W/sf), filled by the chain
	JPEGRange   [2]float64 `json:"jpeg_range"`
	JPEGQuality float32    `json:"jpeg_quality,omitempty"` // drawn by the chain
	JPEGFactor  float32    `json:"jpeg_factor,omitempty"`  // drawn by the chain
}

// Validate checks that the record describes a chain Degrade can run.
func (r *Record) Validate() error {
	if r.SF < 1 {
		return fmt.Errorf("degrade: record: sf %d must be positive", r.SF)
	}
	if err := r.Kernel1.Validate(); err != nil {
		return fmt.Errorf("degrade: record: kernel1: %w", err)
	}
	n1 := r.Kernel1.Size
	if r.Kernel1.Type == KernelSinc && r.Kernel1.PadTo > n1 {
		n1 = r.Kernel1.PadTo
	}
	if r.Kernel1PaddedSize != 0 && (r.Kernel1PaddedSize < n1 || (r.Kernel1PaddedSize-n1)%2 != 0) {
		return fmt.Errorf("degrade: record: kernel1 of size %d cannot be padded to %d", n1, r.Kernel1PaddedSize)
	}
	if err := r.SincKernel.Validate(); err != nil {
		return fmt.Errorf("degrade: record: sinc_kernel: %w", err)
	}
	if r.SincKernel.Type != KernelSinc && r.SincKernel.Type != KernelPulse {
		return fmt.Errorf("degrade: record: final filter type %q (want sinc or pulse)", r.SincKernel.Type)
	}
	switch r.Stage1.Resize.UpDown {
	case ResizeUp, ResizeDown, ResizeKeep, "":
	default:
		return fmt.Errorf("degrade: record: unknown resize direction %q", r.Stage1.Resize.UpDown)
	}
	if s := r.Stage1.Resize.Scale; !(s > 0) || math.IsInf(s, 0) {
		return fmt.Errorf("degrade: record: stage-1 scale %v must be positive and finite", s)
	}
	if err := validMode(r.Stage1.Resize.Mode); err != nil {
		return fmt.Errorf("degrade: record: stage 1: %w", err)
	}
	if err := validMode(r.Final.Mode); err != nil {
		return fmt.Errorf("degrade: record: final stage: %w", err)
	}
	switch r.Stage1.Noise.Kind {
	case NoiseGaussian, NoisePoisson:
	default:
		return fmt.Errorf("degrade: record: unknown noise kind %q", r.Stage1.Noise.Kind)
	}
	if err := checkRange("noise range", r.Stage1.Noise.Range); err != nil {
		return fmt.Errorf("degrade: record: %w", err)
	}
	if err := checkJPEGRange(r.Stage1.JPEGRange); err != nil {
		return fmt.Errorf("degrade: record: stage 1: %w", err)
	}
	if err := checkJPEGRange(r.Final.JPEGRange); err != nil {
		return fmt.Errorf("degrade: record: final stage: %w", err)
	}
	switch r.Final.Order {
	case OrderResizeSincJPEG, OrderJPEGResizeSinc:
	default:
		return fmt.Errorf("degrade: record: unknown final order %q", r.Final.Order)
	}
	if r.SecondOrder.Applied {
		return fmt.Errorf("degrade: record: the second degradation stage is not implemented (first order only)")
	}
	return nil
}

func checkRange(what string, r [2]float64) error {
	if math.IsNaN(r[0]) || math.IsNaN(r[1]) || math.IsInf(r[0], 0) || math.IsInf(r[1], 0) || r[0] > r[1] {
		return fmt.Errorf("%s %v is not a finite [lo, hi] range", what, r)
	}
	return nil
}

func checkJPEGRange(r [2]float64) error {
	if err := checkRange("jpeg range", r); err != nil {
		return err
	}
	if r[0] <= 0 || r[1] > 100 {
		return fmt.Errorf("jpeg range %v must lie in (0, 100]", r)
	}
	return nil
}
