package degrade

import (
	"fmt"
	"testing"

	"github.com/dp2osr/dp2o/internal/testutil"
	"github.com/dp2osr/dp2o/torch"
)

// tolJPEGStage is the tolerance of the JPEG intermediates, which live in
// 0–255 units: the output's 1e-5 on the 0–1 scale times 255 (the reference
// BLAS moves the DCT coefficients by up to 1.2e-4, README §3).
const tolJPEGStage = tolJPEG * 255

// flippedMask marks the output pixels of the (B, Hp, Wp) padded image whose
// 8×8 luma block or 16×16 chroma block holds a quantised coefficient that
// differs from the fixture's, and returns how many coefficients differ.
func flippedMask(got, want map[string]*torch.Tensor, prefix string, b, hp, wp int) ([]bool, int) {
	mask := make([]bool, b*hp*wp)
	flips := 0
	for _, comp := range []string{"y", "cb", "cr"} {
		g, ok1 := got[comp+"_q"]
		w, ok2 := want[prefix+comp+"_q"]
		if !ok1 || !ok2 {
			continue
		}
		gs, ws := g.Float32s(), w.Float32s()
		scale, bw := 1, wp/8
		if comp != "y" {
			scale, bw = 2, wp/16
		}
		nb := len(gs) / (b * 64)
		for i := range gs {
			if gs[i] == ws[i] {
				continue
			}
			flips++
			img, blk := i/(nb*64), (i/64)%nb
			r0, c0 := (blk/bw)*8*scale, (blk%bw)*8*scale
			for r := r0; r < r0+8*scale; r++ {
				for c := c0; c < c0+8*scale; c++ {
					mask[(img*hp+r)*wp+c] = true
				}
			}
		}
	}
	return mask, flips
}

func TestDiffJPEG(t *testing.T) {
	testutil.NoLeak(t)
	var cases struct {
		Cases []struct {
			Name          string    `json:"name"`
			Quality       []float64 `json:"quality"`
			Shape         []int64   `json:"shape"`
			Intermediates []string  `json:"intermediates"`
		}
	}
	readJSON(t, "degrade/jpeg.json", &cases)
	want := testutil.Tensors(t, testutil.Fixture(t, "degrade/jpeg.safetensors"))
	dev := testutil.Device(t)
	for _, c := range cases.Cases {
		t.Run(c.Name, func(t *testing.T) {
			s := torch.NewScope()
			defer s.Close()
			p := c.Name + "/"
			x := tensor(t, want, p+"in")
			q := tensor(t, want, p+"quality")
			if len(c.Quality) != int(q.Size(0)) {
				t.Fatalf("quality tensor %v vs JSON %v", q.Shape(), c.Quality)
			}
			tap, got := collect(t)
			out := DiffJPEG(x.ToDevice(dev), q.ToDevice(dev), tap)
			if fmt.Sprint(out.Shape()) != fmt.Sprint(c.Shape) {
				t.Fatalf("shape %v, want %v", out.Shape(), c.Shape)
			}
			// The factor is float32 scalar arithmetic: bit-exact.
			testutil.AssertEqual(t, "factor", got["factor"], tensor(t, want, p+"factor"))
			b, h, w := int(c.Shape[0]), int(c.Shape[2]), int(c.Shape[3])
			hp, wp := (h+15)/16*16, (w+15)/16*16
			mask, flips := flippedMask(got, want, p, b, hp, wp)
			for _, k := range c.Intermediates {
				if k == "factor" {
					continue
				}
				g, ok := got[k]
				if !ok {
					t.Fatalf("intermediate %q not produced", k)
				}
				if k == "y_q" || k == "cb_q" || k == "cr_q" {
					continue // counted as flips
				}
				if flips == 0 {
					testutil.AssertClose(t, k, g, tensor(t, want, p+k), tolJPEGStage, 0)
				}
			}
			if flips > 0 {
				t.Logf("%d quantised coefficients differ from the fixture; comparing outside their blocks", flips)
			}
			// The output, everywhere (no flip) or outside the flipped blocks.
			og, ow := out.ToDevice(torch.CPU).Float32s(), tensor(t, want, p+"out").Float32s()
			worst := 0.0
			for i := range og {
				img, ch := i/(3*h*w), i%(3*h*w)
				r, col := (ch%(h*w))/w, ch%w
				if mask[(img*hp+r)*wp+col] {
					continue
				}
				worst = max(worst, abs64(float64(og[i])-float64(ow[i])))
			}
			if worst > tolJPEG {
				t.Fatalf("out: max |diff| %.3g > %g outside flipped blocks", worst, tolJPEG)
			}
			t.Logf("out: max |diff| %.3g", worst)
		})
	}
}

func abs64(v float64) float64 {
	if v < 0 {
		return -v
	}
	return v
}
