package main

import (
	"context"
	"encoding/csv"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"text/tabwriter"

	"github.com/urfave/cli/v2"

	"github.com/dp2osr/dp2o/imageio"
	"github.com/dp2osr/dp2o/reward"
	_ "github.com/dp2osr/dp2o/reward/all" // every metric
	"github.com/dp2osr/dp2o/torch"
)

// job is one image to score, with its reference ("" when none).
type job struct {
	name, path, ref string
}

// result is the scores of every job: rows[i][k] is metric k of job i.
type result struct {
	metrics []reward.Metric
	jobs    []job
	rows    [][]float64
	reward  []float64 // nil unless --reward
}

func run(c *cli.Context) error {
	if c.Bool("list") {
		for _, n := range reward.Names() {
			fmt.Fprintln(c.App.Writer, n)
		}
		return nil
	}
	if c.NArg() != 1 {
		return errors.New("want one IMAGE_OR_FOLDER argument (see --help)")
	}
	names, err := reward.ExpandNames(c.String("metrics"))
	if err != nil {
		return fmt.Errorf("--metrics: %w", err)
	}
	format := c.String("format")
	if format != "table" && format != "csv" {
		return fmt.Errorf("--format %q: want table or csv", format)
	}
	dev, err := torch.ParseDevice(c.String("device"))
	if err != nil {
		return err
	}
	dtype, err := torch.ParseDType(c.String("dtype"))
	if err != nil {
		return err
	}
	overrides := map[string]string{}
	for _, kv := range c.StringSlice("weight") {
		k, v, ok := strings.Cut(kv, "=")
		if !ok || k == "" || v == "" {
			return fmt.Errorf("--weight %q: want name=path", kv)
		}
		overrides[k] = v
	}
	jobs, err := pairJobs(c.Args().First(), c.String("ref"))
	if err != nil {
		return err
	}
	h, err := reward.OpenHybrid(names, func(name string) reward.OpenOptions {
		w := c.String("weights")
		if p, ok := overrides[name]; ok {
			w = p
		}
		return reward.OpenOptions{Weights: w, Device: dev, DType: dtype}
	})
	if err != nil {
		return err
	}
	defer h.Close()
	for _, s := range h.Scorers {
		if s.FullReference() && c.String("ref") == "" {
			return fmt.Errorf("metric %s is full-reference: give --ref", s.Name())
		}
	}
	res, err := score(c.Context, h, jobs, dev)
	if err != nil {
		return err
	}
	if c.Bool("reward") {
		if len(jobs) < 2 {
			return errors.New("--reward needs a group of at least two images")
		}
		if _, res.reward, err = reward.GroupReward(res.rows, res.metrics); err != nil {
			return err
		}
	}
	out := c.App.Writer
	if p := c.String("output"); p != "" {
		f, err := os.Create(p)
		if err != nil {
			return err
		}
		defer f.Close()
		out = f
	}
	if format == "csv" {
		return writeCSV(out, res)
	}
	return writeTable(out, res)
}

// pairJobs lists the images of target (a file or a folder) and pairs each
// with its reference: the file ref, or the file of the folder ref with the
// same name (the same base name with any image extension).
func pairJobs(target, ref string) ([]job, error) {
	paths, err := imageio.ListImages(target)
	if err != nil {
		return nil, err
	}
	if len(paths) == 0 {
		return nil, fmt.Errorf("%s: no images", target)
	}
	var refDir map[string]string
	if ref != "" {
		st, err := os.Stat(ref)
		if err != nil {
			return nil, err
		}
		if st.IsDir() {
			refs, err := imageio.ListImages(ref)
			if err != nil {
				return nil, err
			}
			refDir = map[string]string{}
			for _, r := range refs {
				refDir[stem(r)] = r
			}
		}
	}
	var jobs []job
	var missing []string
	for _, p := range paths {
		j := job{name: filepath.Base(p), path: p}
		switch {
		case refDir != nil:
			r, ok := refDir[stem(p)]
			if !ok {
				missing = append(missing, j.name)
				continue
			}
			j.ref = r
		case ref != "":
			j.ref = ref
		}
		jobs = append(jobs, j)
	}
	if len(missing) > 0 {
		return nil, fmt.Errorf("no reference in %s for %d image(s): %s", ref, len(missing), strings.Join(missing, ", "))
	}
	return jobs, nil
}

func stem(p string) string {
	b := filepath.Base(p)
	return strings.TrimSuffix(b, filepath.Ext(b))
}

// score runs every metric on every job, one image at a time (sizes may
// differ between images).
func score(ctx context.Context, h *reward.Hybrid, jobs []job, dev torch.Device) (*result, error) {
	res := &result{metrics: h.Metrics(), jobs: jobs}
	for _, j := range jobs {
		row, err := scoreOne(ctx, h, j, dev)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", j.path, err)
		}
		res.rows = append(res.rows, row)
	}
	return res, nil
}

func scoreOne(ctx context.Context, h *reward.Hybrid, j job, dev torch.Device) ([]float64, error) {
	s := torch.NewScope()
	defer s.Close()
	img, err := load(j.path, dev)
	if err != nil {
		return nil, err
	}
	var ref *torch.Tensor
	if j.ref != "" {
		if ref, err = load(j.ref, dev); err != nil {
			return nil, err
		}
	}
	raw, err := h.Raw(ctx, img, ref)
	if err != nil {
		return nil, err
	}
	return raw[0], nil
}

func load(path string, dev torch.Device) (t *torch.Tensor, err error) {
	t, err = reward.LoadImage(path)
	if err != nil || dev == torch.CPU {
		return t, err
	}
	err = torch.Try(func() { t = t.ToDevice(dev) })
	return t, err
}

func header(r *result) []string {
	h := []string{"image"}
	hasRef := false
	for _, j := range r.jobs {
		hasRef = hasRef || j.ref != ""
	}
	if hasRef {
		h = append(h, "reference")
	}
	for _, m := range r.metrics {
		arrow := "↑"
		if !m.HigherIsBetter {
			arrow = "↓"
		}
		h = append(h, m.Name+arrow)
	}
	if r.reward != nil {
		h = append(h, "reward↑")
	}
	return h
}

func rowsOf(r *result, format func(float64) string) [][]string {
	hasRef := len(header(r)) > 1+len(r.metrics)+btoi(r.reward != nil)
	var rows [][]string
	for i, j := range r.jobs {
		row := []string{j.name}
		if hasRef {
			row = append(row, filepath.Base(j.ref))
		}
		for _, v := range r.rows[i] {
			row = append(row, format(v))
		}
		if r.reward != nil {
			row = append(row, format(r.reward[i]))
		}
		rows = append(rows, row)
	}
	return rows
}

func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}

func writeCSV(w io.Writer, r *result) error {
	cw := csv.NewWriter(w)
	h := header(r)
	for i := range h {
		h[i] = strings.TrimRight(h[i], "↑↓")
	}
	if err := cw.Write(h); err != nil {
		return err
	}
	for _, row := range rowsOf(r, func(v float64) string { return strconv.FormatFloat(v, 'g', -1, 64) }) {
		if err := cw.Write(row); err != nil {
			return err
		}
	}
	cw.Flush()
	return cw.Error()
}

func writeTable(w io.Writer, r *result) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	h := header(r)
	fmt.Fprintln(tw, strings.Join(h, "\t")+"\t")
	rows := rowsOf(r, func(v float64) string { return strconv.FormatFloat(v, 'f', 4, 64) })
	for _, row := range rows {
		fmt.Fprintln(tw, strings.Join(row, "\t")+"\t")
	}
	if len(r.jobs) > 1 {
		mean := make([]string, len(h))
		mean[0] = "mean"
		off := len(h) - len(r.metrics) - btoi(r.reward != nil)
		for k := range r.metrics {
			s := 0.0
			for i := range r.rows {
				s += r.rows[i][k]
			}
			mean[off+k] = strconv.FormatFloat(s/float64(len(r.rows)), 'f', 4, 64)
		}
		fmt.Fprintln(tw, strings.Join(mean, "\t")+"\t")
	}
	return tw.Flush()
}
