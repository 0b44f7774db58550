package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"image"
	"image/color"
	"image/png"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"github.com/dp2osr/dp2o/internal/testutil"
)

func writePNG(t *testing.T, path string, w, h, seed int) {
	img := image.NewRGBA(image.Rect(0, 0, w, h))
	for y := 0; y < h; y++ {
		for x := 0; x < w; x++ {
			img.Set(x, y, color.RGBA{uint8(x*7 + seed), uint8(y*5 + 3*seed), uint8((x*y + seed) % 256), 255})
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

func runApp(ctx context.Context, args ...string) (string, error) {
	app := newApp()
	var out, errOut bytes.Buffer
	app.Writer, app.ErrWriter = &out, &errOut
	err := app.RunContext(ctx, append([]string{"degrade", "--quiet"}, args...))
	return out.String() + errOut.String(), err
}

// digest maps every file under dir to its sha256.
func digest(t *testing.T, dir string) map[string]string {
	m := map[string]string{}
	filepath.Walk(dir, func(p string, fi os.FileInfo, err error) error {
		if err != nil || fi.IsDir() {
			return err
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		m[rel] = fmt.Sprintf("%x", sha256.Sum256(b))
		return nil
	})
	return m
}

func keys(m map[string]string) []string {
	var k []string
	for n := range m {
		k = append(k, n)
	}
	sort.Strings(k)
	return k
}

func TestDegradeFolderResumable(t *testing.T) {
	testutil.NoLeak(t)
	hr := t.TempDir()
	writePNG(t, filepath.Join(hr, "a.png"), 40, 36, 1)
	writePNG(t, filepath.Join(hr, "b.png"), 24, 50, 2) // smaller than the crop: reflect-padded
	writePNG(t, filepath.Join(hr, "c.png"), 64, 64, 3)
	os.WriteFile(filepath.Join(hr, "broken.png"), []byte("not a png"), 0o644)
	out := filepath.Join(t.TempDir(), "out")
	args := []string{"--hr_dir", hr, "--output_dir", out, "--gt_size", "32", "--seed", "5"}

	msg, err := runApp(context.Background(), args...)
	if err != nil {
		t.Fatalf("%v\n%s", err, msg)
	}
	if !strings.Contains(msg, "3 made, 0 already done, 1 skipped") || !strings.Contains(msg, "skipping") {
		t.Fatalf("first run: %s", msg)
	}
	first := digest(t, out)
	for _, n := range []string{"a", "b", "c"} {
		for _, f := range []string{"hr/" + n + ".png", "lr/" + n + ".png", "records/" + n + ".json"} {
			if _, ok := first[f]; !ok {
				t.Fatalf("missing %s (have %v)", f, keys(first))
			}
		}
	}
	b, _ := os.ReadFile(filepath.Join(out, "skipped.json"))
	if !strings.Contains(string(b), "broken.png") {
		t.Fatalf("skipped.json: %s", b)
	}
	lr, err := os.Open(filepath.Join(out, "lr", "a.png"))
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := png.DecodeConfig(lr)
	lr.Close()
	if err != nil || cfg.Width != 8 || cfg.Height != 8 {
		t.Fatalf("lr/a.png: %+v %v, want 8x8", cfg, err)
	}

	// A finished run does nothing.
	msg, err = runApp(context.Background(), args...)
	if err != nil || !strings.Contains(msg, "0 made, 3 already done") {
		t.Fatalf("rerun: %v %s", err, msg)
	}
	if fmt.Sprint(digest(t, out)) != fmt.Sprint(first) {
		t.Fatal("a rerun changed files")
	}

	// An interrupted run (files of b lost, a stale temporary file left)
	// resumes to the same bytes.
	os.Remove(filepath.Join(out, "records", "b.json"))
	os.Remove(filepath.Join(out, "lr", "b.png"))
	os.WriteFile(filepath.Join(out, "lr", ".b.png.tmp-123"), []byte("half a png"), 0o644)
	msg, err = runApp(context.Background(), args...)
	if err != nil || !strings.Contains(msg, "1 made, 2 already done") {
		t.Fatalf("resume: %v %s", err, msg)
	}
	if fmt.Sprint(digest(t, out)) != fmt.Sprint(first) {
		t.Fatal("the resumed run differs from the uninterrupted one")
	}

	// A cancelled context stops before any image.
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := runApp(ctx, "--hr_dir", hr, "--output_dir", filepath.Join(t.TempDir(), "o2"), "--gt_size", "32"); err == nil {
		t.Fatal("cancelled run returned no error")
	}

	// Other settings are refused, not mixed.
	if msg, err := runApp(context.Background(), "--hr_dir", hr, "--output_dir", out, "--gt_size", "32", "--seed", "6"); err == nil ||
		!strings.Contains(err.Error(), "refusing to mix") {
		t.Fatalf("other seed into the same folder: %v %s", err, msg)
	}
	// --on_error fail stops on the broken image.
	if _, err := runApp(context.Background(), "--hr_dir", hr, "--output_dir", filepath.Join(t.TempDir(), "o3"), "--gt_size", "32", "--on_error", "fail"); err == nil ||
		!strings.Contains(err.Error(), "broken.png") {
		t.Fatalf("--on_error fail: %v", err)
	}
}

func TestDegradeBadFlags(t *testing.T) {
	hr := t.TempDir()
	writePNG(t, filepath.Join(hr, "a.png"), 16, 16, 1)
	out := t.TempDir()
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"--hr_dir", hr, "--output_dir", out, "--config", "nope"}, "unknown config"},
		{[]string{"--hr_dir", hr, "--output_dir", out, "--gt_size", "30"}, "multiple of sf"},
		{[]string{"--hr_dir", hr, "--output_dir", out, "--on_error", "maybe"}, "--on_error"},
		{[]string{"--hr_dir", filepath.Join(hr, "a.png"), "--output_dir", out}, "not a folder"},
		{[]string{"--hr_dir", t.TempDir(), "--output_dir", out}, "no images"},
		{[]string{"--hr_dir", hr, "--output_dir", out, "--config", filepath.Join(hr, "missing.json")}, "no such file"},
	} {
		if _, err := runApp(context.Background(), c.args...); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%v: error %v, want %q", c.args, err, c.want)
		}
	}
}
