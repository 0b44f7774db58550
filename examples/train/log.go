package main

import (
	"encoding/csv"
	"errors"
	"fmt"
	"image/color"
	"os"
	"strconv"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"

	"github.com/dp2osr/dp2o/preference"
)

// logHeader is train_log.csv's header: one row per optimizer step.
var logHeader = []string{"step", "loss", "accuracy", "reward_margin", "model_margin", "ref_margin", "grad_norm", "clip_coef", "lr", "pairs_per_s"}

// trainLog appends rows to the CSV log.
type trainLog struct {
	f *os.File
	w *csv.Writer
}

// openLog opens path for appending; rows after step (those of a run that
// went on past the checkpoint being resumed) are dropped first.
func openLog(path string, step int) (*trainLog, error) {
	var keep [][]string
	if f, err := os.Open(path); err == nil {
		rows, err := csv.NewReader(f).ReadAll()
		f.Close()
		if err != nil {
			return nil, fmt.Errorf("%s: %w", path, err)
		}
		for i, r := range rows {
			if i == 0 {
				continue
			}
			if n, err := strconv.Atoi(r[0]); err == nil && n <= step {
				keep = append(keep, r)
			}
		}
	} else if !errors.Is(err, os.ErrNotExist) {
		return nil, err
	}
	f, err := os.Create(path)
	if err != nil {
		return nil, err
	}
	w := csv.NewWriter(f)
	if err := w.Write(logHeader); err != nil {
		f.Close()
		return nil, err
	}
	if err := w.WriteAll(keep); err != nil {
		f.Close()
		return nil, err
	}
	return &trainLog{f: f, w: w}, nil
}

func (l *trainLog) write(st *preference.StepStats, pairsPerS float64) error {
	g := func(v float64) string { return strconv.FormatFloat(v, 'g', 8, 64) }
	l.w.Write([]string{strconv.Itoa(st.Step + 1), g(st.Loss), g(st.Accuracy), g(st.RewardMargin), g(st.ModelMargin),
		g(st.RefMargin), g(st.GradNorm), g(st.ClipCoef), g(st.LR), g(pairsPerS)})
	l.w.Flush()
	return l.w.Error()
}

// Close flushes and closes the file; it is idempotent.
func (l *trainLog) Close() error {
	if l.f == nil {
		return nil
	}
	l.w.Flush()
	err := errors.Join(l.w.Error(), l.f.Close())
	l.f = nil
	return err
}

// plotLog draws the loss and the implicit accuracy of the CSV log against
// the step and saves the figure (the extension picks the format).
func plotLog(logPath, out string) error {
	f, err := os.Open(logPath)
	if err != nil {
		return err
	}
	rows, err := csv.NewReader(f).ReadAll()
	f.Close()
	if err != nil {
		return fmt.Errorf("%s: %w", logPath, err)
	}
	if len(rows) < 2 {
		return fmt.Errorf("%s: no steps to plot", logPath)
	}
	loss, acc := make(plotter.XYs, 0, len(rows)-1), make(plotter.XYs, 0, len(rows)-1)
	for _, r := range rows[1:] {
		var v [3]float64
		for i, k := range []int{0, 1, 2} {
			if v[i], err = strconv.ParseFloat(r[k], 64); err != nil {
				return fmt.Errorf("%s: %w", logPath, err)
			}
		}
		loss = append(loss, plotter.XY{X: v[0], Y: v[1]})
		acc = append(acc, plotter.XY{X: v[0], Y: v[2]})
	}
	p := plot.New()
	p.Title.Text = "DPO training"
	p.X.Label.Text = "step"
	p.Y.Label.Text = "loss / implicit accuracy"
	p.Legend.Top = true
	for _, c := range []struct {
		name string
		xy   plotter.XYs
		col  color.Color
	}{{"loss", loss, color.RGBA{R: 0x1f, G: 0x77, B: 0xb4, A: 0xff}}, {"implicit accuracy", acc, color.RGBA{R: 0xd6, G: 0x27, B: 0x28, A: 0xff}}} {
		l, err := plotter.NewLine(c.xy)
		if err != nil {
			return err
		}
		l.Color = c.col
		l.Width = vg.Points(1.5)
		p.Add(l)
		p.Legend.Add(c.name, l)
	}
	if err := p.Save(6*vg.Inch, 4*vg.Inch, out); err != nil {
		return fmt.Errorf("saving %s: %w", out, err)
	}
	return nil
}
