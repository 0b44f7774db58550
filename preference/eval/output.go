package eval

import (
	"encoding/csv"
	"fmt"
	"image/color"
	"io"
	"strconv"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
)

// Curve is one model's curves.
type Curve struct {
	Name   string
	Points []Point
}

// WriteCurvesCSV writes the curves as CSV: model,M,best,mean,worst.
func WriteCurvesCSV(w io.Writer, curves []Curve) error {
	cw := csv.NewWriter(w)
	if err := cw.Write([]string{"model", "M", "best", "mean", "worst"}); err != nil {
		return err
	}
	f := func(v float64) string { return strconv.FormatFloat(v, 'f', 6, 64) }
	for _, c := range curves {
		for _, p := range c.Points {
			if err := cw.Write([]string{c.Name, strconv.Itoa(p.M), f(p.Best), f(p.Mean), f(p.Worst)}); err != nil {
				return err
			}
		}
	}
	cw.Flush()
	return cw.Error()
}

// palette colours the models of a plot.
var palette = []color.Color{
	color.RGBA{R: 0x1f, G: 0x77, B: 0xb4, A: 0xff},
	color.RGBA{R: 0xd6, G: 0x27, B: 0x28, A: 0xff},
	color.RGBA{R: 0x2c, G: 0xa0, B: 0x2c, A: 0xff},
	color.RGBA{R: 0xff, G: 0x7f, B: 0x0e, A: 0xff},
	color.RGBA{R: 0x94, G: 0x67, B: 0xbd, A: 0xff},
	color.RGBA{R: 0x8c, G: 0x56, B: 0x4b, A: 0xff},
}

// PlotCurves draws the curves (one colour per model; Best@M solid, Mean@M
// dashed, Worst@M dotted; M on a log₂ axis as in the paper's Figure 5) and
// saves the plot at path; the extension picks the format (.png, .svg, .pdf).
func PlotCurves(path, title string, curves []Curve) error {
	if len(curves) == 0 {
		return fmt.Errorf("eval: nothing to plot")
	}
	p := plot.New()
	p.Title.Text = title
	p.X.Label.Text = "M (samples per input)"
	p.Y.Label.Text = "perceptual reward"
	p.X.Scale = plot.LogScale{}
	p.X.Tick.Marker = powersOfTwo{}
	p.Legend.Top = true
	p.Legend.Left = true
	dashes := [][]vg.Length{nil, {vg.Points(6), vg.Points(3)}, {vg.Points(1.5), vg.Points(2)}}
	for ci, c := range curves {
		if len(c.Points) == 0 {
			return fmt.Errorf("eval: curve %s has no points", c.Name)
		}
		for si, what := range []string{"Best", "Mean", "Worst"} {
			xy := make(plotter.XYs, len(c.Points))
			for i, pt := range c.Points {
				xy[i].X = float64(pt.M)
				xy[i].Y = [...]float64{pt.Best, pt.Mean, pt.Worst}[si]
			}
			l, err := plotter.NewLine(xy)
			if err != nil {
				return fmt.Errorf("eval: %w", err)
			}
			l.Color = palette[ci%len(palette)]
			l.Width = vg.Points(1.5)
			l.Dashes = dashes[si]
			p.Add(l)
			p.Legend.Add(fmt.Sprintf("%s %s@M", c.Name, what), l)
		}
	}
	if err := p.Save(6*vg.Inch, 4.5*vg.Inch, path); err != nil {
		return fmt.Errorf("eval: saving the plot: %w", err)
	}
	return nil
}

// powersOfTwo ticks a log axis at 1, 2, 4, 8, ….
type powersOfTwo struct{}

func (powersOfTwo) Ticks(min, max float64) []plot.Tick {
	var t []plot.Tick
	for v := 1.0; v <= max*1.0001; v *= 2 {
		if v >= min*0.9999 {
			t = append(t, plot.Tick{Value: v, Label: strconv.Itoa(int(v))})
		}
	}
	return t
}
