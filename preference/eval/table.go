package eval

import (
	"context"
	"encoding/csv"
	"errors"
	"fmt"
	"io"
	"math"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/dp2osr/dp2o/imageio"
	"github.com/dp2osr/dp2o/preference/sample"
	"github.com/dp2osr/dp2o/reward"
	"github.com/dp2osr/dp2o/torch"
)

// Folder is one method's outputs: a name for the table and a folder of
// images named as their HR images.
type Folder struct {
	Name, Dir string
}

// Table is the metric table of one or more methods (the paper's Table 1):
// Scores[f][i][k] is metric k of image Images[f][i] of folder f.
type Table struct {
	Methods []string
	Metrics []reward.Metric
	Images  [][]string
	Scores  [][][]float64
}

// ScoreFolders scores every image of each folder with every scorer,
// full-reference metrics against the image of hrDir with the same name
// (stem). An output without its HR, an HR of another size, or an unreadable
// image is an error naming it. Progress, when set, is called after each image.
func ScoreFolders(ctx context.Context, folders []Folder, hrDir string, scorers []reward.Scorer, dev torch.Device, progress func(done, total int)) (*Table, error) {
	if len(folders) == 0 {
		return nil, errors.New("eval: no output folders")
	}
	if len(scorers) == 0 {
		return nil, errors.New("eval: no metrics")
	}
	needHR := false
	t := &Table{}
	for _, s := range scorers {
		t.Metrics = append(t.Metrics, reward.MetricOf(s))
		needHR = needHR || s.FullReference()
	}
	hr := map[string]string{}
	if hrDir != "" {
		hs, err := imageio.ListImages(hrDir)
		if err != nil {
			return nil, fmt.Errorf("eval: %w", err)
		}
		for _, h := range hs {
			hr[sample.Stem(h)] = h
		}
	} else if needHR {
		return nil, errors.New("eval: full-reference metrics need the HR folder")
	}
	lists := make([][]string, len(folders))
	total := 0
	for f, fo := range folders {
		paths, err := imageio.ListImages(fo.Dir)
		if err != nil {
			return nil, fmt.Errorf("eval: %s: %w", fo.Name, err)
		}
		if len(paths) == 0 {
			return nil, fmt.Errorf("eval: %s: no images in %s", fo.Name, fo.Dir)
		}
		var missing []string
		for _, p := range paths {
			if _, ok := hr[sample.Stem(p)]; needHR && !ok {
				missing = append(missing, filepath.Base(p))
			}
		}
		if len(missing) > 0 {
			return nil, fmt.Errorf("eval: %s: %d outputs without an HR image of the same name in %s: %s", fo.Name, len(missing), hrDir, strings.Join(missing[:min(5, len(missing))], ", "))
		}
		lists[f] = paths
		total += len(paths)
	}
	done := 0
	for f, fo := range folders {
		t.Methods = append(t.Methods, fo.Name)
		var names []string
		var rows [][]float64
		for _, p := range lists[f] {
			row, err := scoreOne(ctx, p, hr[sample.Stem(p)], scorers, dev)
			if err != nil {
				return nil, fmt.Errorf("eval: %s: %w", fo.Name, err)
			}
			names = append(names, filepath.Base(p))
			rows = append(rows, row)
			done++
			if progress != nil {
				progress(done, total)
			}
		}
		t.Images = append(t.Images, names)
		t.Scores = append(t.Scores, rows)
	}
	return t, nil
}

// scoreOne scores one output (against ref when it is not empty).
func scoreOne(ctx context.Context, path, ref string, scorers []reward.Scorer, dev torch.Device) (row []float64, err error) {
	img, err := reward.LoadImage(path)
	if err != nil {
		return nil, err
	}
	defer img.Close()
	var r *torch.Tensor
	if ref != "" {
		if r, err = reward.LoadImage(ref); err != nil {
			return nil, fmt.Errorf("HR image: %w", err)
		}
		defer r.Close()
		if a, b := img.Shape(), r.Shape(); a[2] != b[2] || a[3] != b[3] {
			return nil, fmt.Errorf("%s is %d×%d but its HR %s is %d×%d: full-reference metrics need the same size", path, a[3], a[2], ref, b[3], b[2])
		}
	}
	sc := torch.NewScope()
	defer sc.Close()
	var di, dr *torch.Tensor
	if err := torch.Try(func() {
		di = img.ToDevice(dev)
		if r != nil {
			dr = r.ToDevice(dev)
		}
	}); err != nil {
		return nil, err
	}
	for _, s := range scorers {
		var v []float64
		if s.FullReference() {
			v, err = s.Score(ctx, di, dr)
		} else {
			v, err = s.Score(ctx, di, nil)
		}
		if err != nil {
			return nil, fmt.Errorf("%s: %w", path, err)
		}
		if len(v) != 1 {
			return nil, fmt.Errorf("%s: %s gave %d scores for one image", path, s.Name(), len(v))
		}
		row = append(row, v[0])
	}
	return row, nil
}

// Summary is the mean, the population standard deviation and the count
// of metric k over folder f's images.
func (t *Table) Summary(f, k int) (mean, std float64, n int) {
	rows := t.Scores[f]
	n = len(rows)
	for _, r := range rows {
		mean += r[k]
	}
	mean /= float64(n)
	for _, r := range rows {
		std += (r[k] - mean) * (r[k] - mean)
	}
	return mean, math.Sqrt(std / float64(n)), n
}

// WriteCSV writes the columns method, image, metric, higher_is_better,
// mean, std, n: first one line per method and metric (image empty: the
// mean, population std and count over the images), then one line per
// image and metric (its score as the mean, std empty, n 1).
func (t *Table) WriteCSV(w io.Writer) error {
	cw := csv.NewWriter(w)
	cw.Write([]string{"method", "image", "metric", "higher_is_better", "mean", "std", "n"})
	f := func(v float64) string { return strconv.FormatFloat(v, 'g', 8, 64) }
	for fi, m := range t.Methods {
		for k, met := range t.Metrics {
			mean, std, n := t.Summary(fi, k)
			cw.Write([]string{m, "", met.Name, strconv.FormatBool(met.HigherIsBetter), f(mean), f(std), strconv.Itoa(n)})
		}
	}
	for fi, m := range t.Methods {
		for i, name := range t.Images[fi] {
			for k, met := range t.Metrics {
				cw.Write([]string{m, name, met.Name, strconv.FormatBool(met.HigherIsBetter), f(t.Scores[fi][i][k]), "", "1"})
			}
		}
	}
	cw.Flush()
	return cw.Error()
}

// WriteMarkdown writes the table as the paper lays it out: one row per
// metric (with its direction), one column per method, the means to four
// significant decimals, the best method of each row in bold.
func (t *Table) WriteMarkdown(w io.Writer) error {
	var b strings.Builder
	b.WriteString("| Metric |")
	for _, m := range t.Methods {
		b.WriteString(" " + m + " |")
	}
	b.WriteString("\n|---|")
	for range t.Methods {
		b.WriteString("---|")
	}
	b.WriteString("\n")
	for k, met := range t.Metrics {
		arrow := "↑"
		if !met.HigherIsBetter {
			arrow = "↓"
		}
		best := -1
		means := make([]float64, len(t.Methods))
		for f := range t.Methods {
			means[f], _, _ = t.Summary(f, k)
			if best < 0 || (met.HigherIsBetter && means[f] > means[best]) || (!met.HigherIsBetter && means[f] < means[best]) {
				best = f
			}
		}
		fmt.Fprintf(&b, "| %s%s |", strings.ToUpper(met.Name), arrow)
		for f, v := range means {
			s := formatMean(v)
			if f == best && len(t.Methods) > 1 {
				s = "**" + s + "**"
			}
			b.WriteString(" " + s + " |")
		}
		b.WriteString("\n")
	}
	_, err := io.WriteString(w, b.String())
	return err
}

// formatMean prints 4 decimals below 10 and 2 above, as the paper does.
func formatMean(v float64) string {
	if math.Abs(v) >= 10 {
		return strconv.FormatFloat(v, 'f', 2, 64)
	}
	return strconv.FormatFloat(v, 'f', 4, 64)
}
