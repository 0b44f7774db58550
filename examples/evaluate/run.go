package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/urfave/cli/v2"

	"github.com/dp2osr/dp2o/examples/internal/candidates"
	"github.com/dp2osr/dp2o/examples/internal/launch"
	"github.com/dp2osr/dp2o/examples/internal/progress"
	"github.com/dp2osr/dp2o/preference"
	"github.com/dp2osr/dp2o/preference/eval"
	"github.com/dp2osr/dp2o/preference/label"
	"github.com/dp2osr/dp2o/preference/sample"
	"github.com/dp2osr/dp2o/reward"
	_ "github.com/dp2osr/dp2o/reward/all" // every metric
	"github.com/dp2osr/dp2o/torch"
)

// named splits "NAME=DIR" (or "DIR": the folder's base name).
func named(s string) (name, dir string) {
	if n, d, ok := strings.Cut(s, "="); ok && n != "" && d != "" {
		return n, d
	}
	return filepath.Base(filepath.Clean(s)), s
}

func runCurves(c *cli.Context) error {
	est, err := eval.ParseEstimator(c.String("estimator"))
	if err != nil {
		return fmt.Errorf("--estimator: %w", err)
	}
	bounds, err := readBounds(c)
	if err != nil {
		return err
	}
	var names []string
	var sets []*label.Labels
	var metrics []string
	for i, spec := range c.StringSlice("candidates") {
		name, dir := named(spec)
		if i == 0 {
			if s := c.String("metrics"); s != "" {
				if metrics, err = reward.ExpandNames(s); err != nil {
					return fmt.Errorf("--metrics: %w", err)
				}
			} else if metrics, err = label.ScoredMetrics(dir); err != nil {
				return fmt.Errorf("%s: %w (run examples/label on it first)", dir, err)
			}
			if len(metrics) == 0 {
				return fmt.Errorf("%s: no scores (run examples/label on it first)", dir)
			}
		}
		l, err := label.Build(dir, metrics)
		if err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
		names = append(names, name)
		sets = append(sets, l)
	}
	return writeCurves(c, names, sets, metrics, est, bounds)
}

// writeCurves turns labelled sets into curves.csv and curves.png.
func writeCurves(c *cli.Context, names []string, sets []*label.Labels, metrics []string, est eval.Estimator, bounds eval.Bounds) error {
	rewards, err := eval.PoolRewards(sets, bounds)
	if err != nil {
		return err
	}
	maxM := c.Int("max_m")
	if maxM == 0 { // the fewest candidates of any input
		maxM = len(sets[0].Groups[0].Raw)
		for _, l := range sets {
			for _, g := range l.Groups {
				maxM = min(maxM, len(g.Raw))
			}
		}
	}
	var curves []eval.Curve
	for s, r := range rewards {
		pts, err := eval.Curves(r, maxM, est)
		if err != nil {
			return fmt.Errorf("%s: %w", names[s], err)
		}
		curves = append(curves, eval.Curve{Name: names[s], Points: pts})
	}
	out := c.String("output_dir")
	if err := os.MkdirAll(out, 0o755); err != nil {
		return err
	}
	var buf bytes.Buffer
	if err := eval.WriteCurvesCSV(&buf, curves); err != nil {
		return err
	}
	if err := preference.WriteFileAtomic(filepath.Join(out, "curves.csv"), buf.Bytes()); err != nil {
		return err
	}
	if err := eval.PlotCurves(filepath.Join(out, "curves.png"), c.String("title"), curves); err != nil {
		return err
	}
	for s, cv := range curves {
		first, last := cv.Points[0], cv.Points[len(cv.Points)-1]
		fmt.Fprintf(c.App.Writer, "%s: %d images, M=1 %.4f; Best@%d %.4f, Mean@%d %.4f, Worst@%d %.4f\n",
			cv.Name, len(rewards[s]), first.Mean, last.M, last.Best, last.M, last.Mean, last.M, last.Worst)
	}
	fmt.Fprintf(c.App.Writer, "curves (%s; metrics %s) → %s, %s\n", est, strings.Join(metrics, ", "),
		filepath.Join(out, "curves.csv"), filepath.Join(out, "curves.png"))
	return nil
}

func runTable(c *cli.Context) error {
	_, h, dev, err := openMetrics(c)
	if err != nil {
		return err
	}
	defer h.Close()
	var folders []eval.Folder
	for _, spec := range c.StringSlice("outputs") {
		n, d := named(spec)
		folders = append(folders, eval.Folder{Name: n, Dir: d})
	}
	tab, err := eval.ScoreFolders(c.Context, folders, c.String("hr_dir"), h.Scorers, dev, progress.New(c, "images").Update())
	if err != nil {
		return err
	}
	out := c.String("output_dir")
	if err := os.MkdirAll(out, 0o755); err != nil {
		return err
	}
	var csvBuf, md bytes.Buffer
	if err := tab.WriteCSV(&csvBuf); err != nil {
		return err
	}
	if err := tab.WriteMarkdown(&md); err != nil {
		return err
	}
	if err := preference.WriteFileAtomic(filepath.Join(out, "table.csv"), csvBuf.Bytes()); err != nil {
		return err
	}
	if err := preference.WriteFileAtomic(filepath.Join(out, "table.md"), md.Bytes()); err != nil {
		return err
	}
	fmt.Fprint(c.App.Writer, md.String())
	fmt.Fprintf(c.App.Writer, "table → %s, %s\n", filepath.Join(out, "table.csv"), filepath.Join(out, "table.md"))
	return nil
}

// readBounds reads --bounds.
func readBounds(c *cli.Context) (eval.Bounds, error) {
	var bounds eval.Bounds
	if p := c.String("bounds"); p != "" {
		b, err := os.ReadFile(p)
		if err != nil {
			return nil, fmt.Errorf("--bounds: %w", err)
		}
		if err := json.Unmarshal(b, &bounds); err != nil {
			return nil, fmt.Errorf("--bounds %s: want {\"metric\": [low, high]}: %w", p, err)
		}
	}
	return bounds, nil
}

// openMetrics opens the --metrics scorers with --weights / --weight.
func openMetrics(c *cli.Context) ([]string, *reward.Hybrid, torch.Device, error) {
	names, err := reward.ExpandNames(c.String("metrics"))
	if err != nil {
		return nil, nil, torch.Device{}, fmt.Errorf("--metrics: %w", err)
	}
	dev, _, err := launch.DeviceAndDType(c.String("device"), "no")
	if err != nil {
		return nil, nil, dev, err
	}
	dtype := torch.Float32
	if s := c.String("dtype"); s != "" {
		if dtype, err = torch.ParseDType(s); err != nil {
			return nil, nil, dev, fmt.Errorf("--dtype: %w", err)
		}
	}
	overrides := map[string]string{}
	for _, kv := range c.StringSlice("weight") {
		k, v, ok := strings.Cut(kv, "=")
		if !ok || k == "" || v == "" {
			return nil, nil, dev, fmt.Errorf("--weight %q: want name=path", kv)
		}
		overrides[k] = v
	}
	h, err := reward.OpenHybrid(names, func(name string) reward.OpenOptions {
		w := c.String("weights")
		if p, ok := overrides[name]; ok {
			w = p
		}
		return reward.OpenOptions{Weights: w, Device: dev, DType: dtype}
	})
	return names, h, dev, err
}

func runModel(c *cli.Context) error {
	est, err := eval.ParseEstimator(c.String("estimator"))
	if err != nil {
		return fmt.Errorf("--estimator: %w", err)
	}
	bounds, err := readBounds(c)
	if err != nil {
		return err
	}
	// The metrics first: a wrong name or checkpoint fails before sampling.
	names, h, dev, err := openMetrics(c)
	if err != nil {
		return err
	}
	defer h.Close()
	work := c.String("work_dir")
	if work == "" {
		work = filepath.Join(c.String("output_dir"), "candidates")
	}
	job, closeJob, err := candidates.Job(c, work, 64)
	defer closeJob()
	if err != nil {
		return err
	}
	job.Progress = progress.New(c, "candidates").Update()
	if _, err := sample.Run(c.Context, job); err != nil {
		return err
	}
	closeJob()
	if _, err := sample.Merge(work, job.Inputs); err != nil {
		return err
	}
	scorers := map[string]reward.Scorer{}
	for i, s := range h.Scorers {
		scorers[names[i]] = s
	}
	lj := label.Job{Dir: work, Metrics: names, Device: dev, Progress: progress.New(c, "scores").Update(),
		Open: func(name string) (reward.Scorer, error) { return keepOpen{scorers[name]}, nil }}
	if _, err := label.Run(c.Context, lj); err != nil {
		return err
	}
	l, err := label.Build(work, names)
	if err != nil {
		return err
	}
	if err := l.Save(filepath.Join(work, label.LabelsFile)); err != nil {
		return err
	}
	name := c.String("name")
	if name == "" {
		name = filepath.Base(filepath.Dir(job.Config.Settings.ControlNet))
	}
	return writeCurves(c, []string{name}, []*label.Labels{l}, names, est, bounds)
}

// keepOpen lends an open scorer to label.Run, which closes what it opens.
type keepOpen struct{ reward.Scorer }

func (keepOpen) Close() error { return nil }
