package main

import (
	"bytes"
	"context"
	"encoding/csv"
	"image"
	"image/color"
	"image/png"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/dp2osr/dp2o/internal/testutil"
	"github.com/dp2osr/dp2o/reward"
	"github.com/dp2osr/dp2o/torch"
)

// writePNG writes a w×h test pattern; shift changes it a little.
func writePNG(t *testing.T, path string, w, h, shift int) {
	t.Helper()
	img := image.NewNRGBA(image.Rect(0, 0, w, h))
	for y := range h {
		for x := range w {
			v := (x*7 + y*13 + shift*(x%5)) % 256
			img.Set(x, y, color.NRGBA{uint8(v), uint8((v + 80) % 256), uint8(255 - v), 255})
		}
	}
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := png.Encode(f, img); err != nil {
		t.Fatal(err)
	}
}

func runApp(args ...string) (string, error) {
	var out bytes.Buffer
	app := newApp()
	app.Writer = &out
	app.ErrWriter = &out
	err := app.Run(append([]string{"score"}, args...))
	return out.String(), err
}

func folders(t *testing.T) (sr, gt string) {
	dir := t.TempDir()
	sr, gt = filepath.Join(dir, "sr"), filepath.Join(dir, "gt")
	for _, d := range []string{sr, gt} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for i, n := range []string{"a", "b", "c"} {
		writePNG(t, filepath.Join(gt, n+".png"), 40, 32, 0)
		writePNG(t, filepath.Join(sr, n+".png"), 40, 32, i+1)
	}
	return sr, gt
}

// TestFolderCSV scores a folder against a reference folder and checks
// every value against the scorers called directly, and the reward column
// against reward.GroupReward.
func TestFolderCSV(t *testing.T) {
	testutil.NoLeak(t)
	sr, gt := folders(t)
	out, err := runApp("--metrics", "psnry,ssim,psnr", "--format", "csv", "--reward", "--ref", gt, sr)
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	recs, err := csv.NewReader(strings.NewReader(out)).ReadAll()
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"image", "reference", "psnry", "ssim", "psnr", "reward"}
	if strings.Join(recs[0], ",") != strings.Join(want, ",") {
		t.Fatalf("header %v, want %v", recs[0], want)
	}
	if len(recs) != 4 {
		t.Fatalf("%d rows", len(recs))
	}
	var raw [][]float64
	var ms []reward.Metric
	for k, name := range want[2:5] {
		s, err := reward.Open(name, reward.OpenOptions{})
		if err != nil {
			t.Fatal(err)
		}
		ms = append(ms, reward.MetricOf(s))
		for i, rec := range recs[1:] {
			if k == 0 {
				raw = append(raw, make([]float64, 3))
			}
			sc := torch.NewScope()
			x, err1 := reward.LoadImage(filepath.Join(sr, rec[0]))
			y, err2 := reward.LoadImage(filepath.Join(gt, rec[1]))
			if err1 != nil || err2 != nil {
				t.Fatal(err1, err2)
			}
			v, err := s.Score(context.Background(), x, y)
			sc.Close()
			if err != nil {
				t.Fatal(err)
			}
			got, _ := strconv.ParseFloat(rec[2+k], 64)
			if got != v[0] {
				t.Errorf("%s %s: CSV %v, scorer %v", rec[0], name, got, v[0])
			}
			raw[i][k] = v[0]
		}
	}
	_, r, err := reward.GroupReward(raw, ms)
	if err != nil {
		t.Fatal(err)
	}
	for i, rec := range recs[1:] {
		got, _ := strconv.ParseFloat(rec[5], 64)
		if math.Abs(got-r[i]) > 1e-15 {
			t.Errorf("%s: reward %v, want %v", rec[0], got, r[i])
		}
	}
}

// TestTableAndSingleImage prints a table for one image against one
// reference and for a folder (with its mean row).
func TestTableAndSingleImage(t *testing.T) {
	sr, gt := folders(t)
	out, err := runApp("--metrics", "ssim", "--ref", filepath.Join(gt, "a.png"), filepath.Join(sr, "a.png"))
	if err != nil || !strings.Contains(out, "ssim↑") || !strings.Contains(out, "a.png") || strings.Contains(out, "mean") {
		t.Fatalf("single image: %v\n%s", err, out)
	}
	outFile := filepath.Join(t.TempDir(), "scores.txt")
	if _, err := runApp("--metrics", "psnr", "--ref", gt, "--output", outFile, sr); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(outFile)
	if err != nil || !strings.Contains(string(b), "mean") || strings.Count(string(b), "\n") != 5 {
		t.Fatalf("table file: %v\n%s", err, b)
	}
}

// TestErrors: unpaired images, mismatched sizes, FR metrics without a
// reference, unknown metrics, metrics without weights, bad flags.
func TestErrors(t *testing.T) {
	testutil.NoLeak(t)
	sr, gt := folders(t)
	writePNG(t, filepath.Join(sr, "extra.png"), 40, 32, 0)
	cases := []struct {
		args []string
		want string
	}{
		{[]string{"--metrics", "psnr", "--ref", gt, sr}, "extra.png"},
		{[]string{"--metrics", "psnr", sr}, "give --ref"},
		{[]string{"--metrics", "no_such_metric", "--ref", filepath.Join(gt, "a.png"), filepath.Join(sr, "a.png")}, "unknown metric"},
		{[]string{"--metrics", "lpips", "--ref", filepath.Join(gt, "a.png"), filepath.Join(sr, "a.png")}, "weights"},
		{[]string{"--format", "xml", sr}, "--format"},
		{[]string{"--weight", "lpips", sr}, "name=path"},
		{[]string{}, "one IMAGE_OR_FOLDER"},
	}
	for _, c := range cases {
		if _, err := runApp(c.args...); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%v: err = %v, want it to mention %q", c.args, err, c.want)
		}
	}
	small := filepath.Join(t.TempDir(), "small.png")
	writePNG(t, small, 20, 16, 0)
	if _, err := runApp("--metrics", "psnr", "--ref", small, filepath.Join(sr, "a.png")); err == nil || !strings.Contains(err.Error(), "differ in size") {
		t.Errorf("mismatched sizes: err = %v", err)
	}
}

// TestList lists the registered metrics: the fidelity ones and every
// metric package imported through reward/all.
func TestList(t *testing.T) {
	out, err := runApp("--list")
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range []string{"psnr", "ssim", "lpips", "lpips-vgg"} {
		if !strings.Contains(out, n+"\n") {
			t.Errorf("--list lacks %s:\n%s", n, out)
		}
	}
}
