package imageio

import (
	"fmt"
)

// DefaultMaxProcessPixels bounds the processing size PlanSizes and Prepare
// accept: 4096×4096 pixels (16× the 512×512 the models are trained at).
const DefaultMaxProcessPixels = 4096 * 4096

// Size is a width and a height in pixels.
type Size struct{ W, H int }

// Plan is the outcome of the official scripts' resize rules (SPEC §2.2 step
// 5 and step 8) for one image.
type Plan struct {
	OrigW, OrigH int // the input image (W0×H0)
	ProcessSize  int // --process_size
	Upscale      int // --upscale (rscale)

	// Enlarged reports that the first, conditional resize was made: the
	// input was smaller than process_size//upscale on some side.
	Enlarged bool
	// Steps are the targets of the PIL resize calls, in order: the
	// conditional enlargement (only when Enlarged), ×upscale, then the
	// floor to multiples of 8. A step may keep the size (PIL then copies).
	Steps []Size

	ProcW, ProcH int // the processing image I_proc (the last step)
	OutW, OutH   int // the saved output: W0·upscale × H0·upscale
}

// PlanSizes applies the official resize rules to a w0×h0 input, with
// --process_size processSize and --upscale upscale, and
// DefaultMaxProcessPixels as the limit (see PlanSizesLimit).
func PlanSizes(w0, h0, processSize, upscale int) (Plan, error) {
	return PlanSizesLimit(w0, h0, processSize, upscale, DefaultMaxProcessPixels)
}

// PlanSizesLimit is PlanSizes with an explicit bound on ProcW·ProcH. The
// rules, with Python's integer and float arithmetic:
//
//	rscale = upscale
//	if W0 < process_size//rscale or H0 < process_size//rscale:
//	    scale = (process_size//rscale) / min(W0, H0)       # float
//	    W, H = int(scale*W0), int(scale*H0)                 # truncation
//	W, H = W*rscale, H*rscale
//	W, H = W//8*8, H//8*8
//	output = (W0*rscale, H0*rscale)
//
// It fails for non-positive arguments, for a size that ends up 0 (PIL would
// raise "height and width must be > 0") and for a processing size above
// maxProcessPixels (non-positive: no limit besides overflow).
func PlanSizesLimit(w0, h0, processSize, upscale, maxProcessPixels int) (Plan, error) {
	p := Plan{OrigW: w0, OrigH: h0, ProcessSize: processSize, Upscale: upscale}
	if w0 <= 0 || h0 <= 0 {
		return p, fmt.Errorf("imageio: plan: input size %dx%d must be positive", w0, h0)
	}
	if processSize <= 0 {
		return p, fmt.Errorf("imageio: plan: process_size %d must be positive", processSize)
	}
	if upscale <= 0 {
		return p, fmt.Errorf("imageio: plan: upscale %d must be positive", upscale)
	}
	// Sizes far beyond any limit are refused before arithmetic can
	// overflow (and before float→int conversions leave their range).
	const maxSide = 1 << 30
	tooBig := func(what string, w, h int) error {
		return fmt.Errorf("imageio: plan: %s size %dx%d for a %dx%d input (process_size %d, upscale %d) is too large", what, w, h, w0, h0, processSize, upscale)
	}
	if w0 > maxSide || h0 > maxSide || upscale > maxSide {
		return p, tooBig("input", w0, h0)
	}

	w, h := w0, h0
	target := processSize / upscale
	if w0 < target || h0 < target {
		scale := float64(target) / float64(min(w0, h0))
		fw, fh := scale*float64(w0), scale*float64(h0)
		if fw > maxSide || fh > maxSide {
			return p, tooBig("enlarged", int(min(fw, 1<<62)), int(min(fh, 1<<62)))
		}
		w, h = int(fw), int(fh)
		p.Enlarged = true
		p.Steps = append(p.Steps, Size{w, h})
		if w == 0 || h == 0 {
			return p, fmt.Errorf("imageio: plan: enlarged size %dx%d of a %dx%d input (process_size %d, upscale %d) has a zero side", w, h, w0, h0, processSize, upscale)
		}
	}
	if _, ok := mulInts(w, upscale); !ok || w*upscale > maxSide {
		return p, tooBig("upscaled", w, h)
	}
	if _, ok := mulInts(h, upscale); !ok || h*upscale > maxSide {
		return p, tooBig("upscaled", w, h)
	}
	w, h = w*upscale, h*upscale
	p.Steps = append(p.Steps, Size{w, h})
	w, h = w/8*8, h/8*8
	p.Steps = append(p.Steps, Size{w, h})
	p.ProcW, p.ProcH = w, h
	p.OutW, p.OutH = w0*upscale, h0*upscale
	if w == 0 || h == 0 {
		return p, fmt.Errorf("imageio: plan: processing size %dx%d of a %dx%d input (process_size %d, upscale %d) has a zero side: the upscaled image is narrower than 8 pixels", w, h, w0, h0, processSize, upscale)
	}
	if n, ok := mulInts(w, h); !ok || (maxProcessPixels > 0 && n > maxProcessPixels) {
		return p, fmt.Errorf("imageio: plan: processing size %dx%d of a %dx%d input (process_size %d, upscale %d) exceeds the limit of %d pixels", w, h, w0, h0, processSize, upscale, maxProcessPixels)
	}
	if _, ok := mulInts(p.OutW, p.OutH, 3); !ok {
		return p, tooBig("output", p.OutW, p.OutH)
	}
	return p, nil
}

// Prepare turns a loaded input into the processing image I_proc with the
// PIL resize calls of the official scripts (bicubic, each bit-exact, a
// same-size call being a copy), under DefaultMaxProcessPixels.
func Prepare(img *RGB8, processSize, upscale int) (*RGB8, Plan, error) {
	return PrepareLimit(img, processSize, upscale, DefaultMaxProcessPixels)
}

// PrepareLimit is Prepare with an explicit bound on the processing size
// (see PlanSizesLimit). The input is not modified.
func PrepareLimit(img *RGB8, processSize, upscale, maxProcessPixels int) (*RGB8, Plan, error) {
	if img == nil {
		return nil, Plan{}, fmt.Errorf("imageio: prepare: nil image")
	}
	p, err := PlanSizesLimit(img.W, img.H, processSize, upscale, maxProcessPixels)
	if err != nil {
		return nil, p, err
	}
	cur := img
	for _, s := range p.Steps {
		cur = Resize(cur, s.W, s.H, Bicubic)
	}
	return cur, p, nil
}

// Finish resizes a result of the processing size back to the plan's output
// size, as the script's final final_image.resize((W0*rscale, H0*rscale))
// (bicubic; a copy when the size already matches).
func (p Plan) Finish(img *RGB8) *RGB8 {
	return Resize(img, p.OutW, p.OutH, Bicubic)
}
