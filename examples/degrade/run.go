package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"os"
	"path/filepath"
	"reflect"
	"sort"
	"strings"

	"github.com/schollz/progressbar/v3"
	"github.com/urfave/cli/v2"

	"github.com/dp2osr/dp2o/imageio"
	"github.com/dp2osr/dp2o/preference"
	"github.com/dp2osr/dp2o/preference/degrade"
	"github.com/dp2osr/dp2o/reward"
	"github.com/dp2osr/dp2o/torch"
)

// runFormat names the layout of OUT/degrade.json.
const runFormat = "dp2o-degrade/1"

// runInfo is OUT/degrade.json: what every file of the folder was made with.
type runInfo struct {
	Format string         `json:"format"`
	Seed   uint64         `json:"seed"`
	Config degrade.Config `json:"config"`
}

// skipped is one image that could not be read.
type skipped struct {
	Image string `json:"image"`
	Error string `json:"error"`
}

// maxRetries bounds the reseeding after a degenerate draw (JPEG quality 100).
const maxRetries = 8

// imageSeed is an image's seed: base + FNV-1a(name), modulo 2^63.
func imageSeed(base uint64, name string) uint64 {
	h := fnv.New64a()
	h.Write([]byte(name))
	return (base + h.Sum64()) & (1<<63 - 1)
}

func loadConfig(c *cli.Context) (degrade.Config, error) {
	name := c.String("config")
	var cfg degrade.Config
	var err error
	if strings.HasSuffix(strings.ToLower(name), ".json") {
		cfg, err = degrade.LoadConfig(name)
	} else {
		cfg, err = degrade.Named(name)
	}
	if err != nil {
		return cfg, err
	}
	if g := c.Int("gt_size"); g >= 0 {
		cfg.GTSize = g
	}
	return cfg, cfg.Validate()
}

// checkRun writes OUT/degrade.json, or checks that an existing one matches.
func checkRun(out string, info runInfo) error {
	p := filepath.Join(out, "degrade.json")
	b, err := os.ReadFile(p)
	if errors.Is(err, os.ErrNotExist) {
		nb, err := json.MarshalIndent(info, "", " ")
		if err != nil {
			return err
		}
		return preference.WriteFileAtomic(p, append(nb, '\n'))
	}
	if err != nil {
		return err
	}
	var old runInfo
	if err := json.Unmarshal(b, &old); err != nil {
		return fmt.Errorf("%s: %w", p, err)
	}
	if old.Format != info.Format || old.Seed != info.Seed || !reflect.DeepEqual(old.Config, info.Config) {
		return fmt.Errorf("%s was made with another configuration or seed (seed %d, config %q, gt_size %d); "+
			"refusing to mix: use another --output_dir or the same settings", out, old.Seed, old.Config.Name, old.Config.GTSize)
	}
	return nil
}

func run(c *cli.Context) error {
	cfg, err := loadConfig(c)
	if err != nil {
		return err
	}
	onError := c.String("on_error")
	if onError != "skip" && onError != "fail" {
		return fmt.Errorf("--on_error %q: want skip or fail", onError)
	}
	dev, err := torch.ParseDevice(c.String("device"))
	if err != nil {
		return err
	}
	if dev.IsCUDA() && !torch.CUDAAvailable() {
		return fmt.Errorf("--device %s: libtorch sees no CUDA device", c.String("device"))
	}
	st, err := os.Stat(c.String("hr_dir"))
	if err != nil {
		return err
	}
	if !st.IsDir() {
		return fmt.Errorf("--hr_dir %s is not a folder", c.String("hr_dir"))
	}
	paths, err := imageio.ListImages(c.String("hr_dir"))
	if err != nil {
		return err
	}
	if len(paths) == 0 {
		return fmt.Errorf("no images in %s", c.String("hr_dir"))
	}
	names := map[string]string{}
	for _, p := range paths {
		n := strings.TrimSuffix(filepath.Base(p), filepath.Ext(p))
		if o, ok := names[n]; ok {
			return fmt.Errorf("%s and %s would both be written as %s.png", o, p, n)
		}
		names[n] = p
	}
	out := c.String("output_dir")
	for _, d := range []string{"hr", "lr", "records"} {
		if err := os.MkdirAll(filepath.Join(out, d), 0o755); err != nil {
			return err
		}
	}
	if err := removeStaleTemps(out); err != nil {
		return err
	}
	base := c.Uint64("seed")
	if err := checkRun(out, runInfo{Format: runFormat, Seed: base, Config: cfg}); err != nil {
		return err
	}
	var bar *progressbar.ProgressBar
	if !c.Bool("quiet") {
		bar = progressbar.NewOptions(len(paths), progressbar.OptionSetDescription("degrade"), progressbar.OptionSetWriter(c.App.ErrWriter),
			progressbar.OptionShowCount(), progressbar.OptionClearOnFinish())
	}
	var skips []skipped
	made, done := 0, 0
	for _, p := range paths {
		if err := c.Context.Err(); err != nil {
			return err
		}
		n := strings.TrimSuffix(filepath.Base(p), filepath.Ext(p))
		recPath := filepath.Join(out, "records", n+".json")
		if _, err := os.Stat(recPath); err == nil {
			done++
		} else {
			err := one(cfg, dev, p, n, out, imageSeed(base, n))
			var bad *badImage
			switch {
			case errors.As(err, &bad) && onError == "skip":
				fmt.Fprintf(c.App.ErrWriter, "degrade: warning: skipping %s: %v\n", p, bad.err)
				skips = append(skips, skipped{Image: p, Error: bad.err.Error()})
			case err != nil:
				return err
			default:
				made++
			}
		}
		if bar != nil {
			bar.Add(1)
		}
	}
	if err := writeSkipped(out, skips); err != nil {
		return err
	}
	fmt.Fprintf(c.App.Writer, "degrade: %d made, %d already done, %d skipped (%s)\n", made, done, len(skips), out)
	return nil
}

// badImage is an input that cannot be read as an image.
type badImage struct{ err error }

func (b *badImage) Error() string { return b.err.Error() }

// one degrades one image and writes its three files, the record last.
func one(cfg degrade.Config, dev torch.Device, path, name, out string, seed uint64) error {
	s := torch.NewScope()
	defer s.Close()
	hr, err := reward.LoadImage(path)
	if err != nil {
		return &badImage{err}
	}
	if dev != torch.CPU {
		if err := torch.Try(func() { hr = hr.ToDevice(dev) }); err != nil {
			return err
		}
	}
	for try := 0; ; try++ {
		crop, lq, rec, err := cfg.Apply(hr, seed+uint64(try))
		if errors.Is(err, degrade.ErrDegenerateJPEG) && try < maxRetries {
			continue
		}
		if err != nil {
			return fmt.Errorf("%s: %w", path, err)
		}
		defer crop.Close()
		defer lq.Close()
		for _, w := range []struct {
			dir string
			t   *torch.Tensor
		}{{"hr", crop}, {"lr", lq}} {
			m, err := degrade.ToRGB8(w.t)
			if err != nil {
				return err
			}
			if err := imageio.SavePNG(filepath.Join(out, w.dir, name+".png"), m); err != nil {
				return err
			}
		}
		b, err := json.MarshalIndent(struct {
			Image string `json:"image"`
			degrade.Record
		}{path, rec}, "", " ")
		if err != nil {
			return err
		}
		return preference.WriteFileAtomic(filepath.Join(out, "records", name+".json"), append(b, '\n'))
	}
}

// writeSkipped records this run's skipped images in OUT/skipped.json,
// merged with those of earlier runs.
func writeSkipped(out string, skips []skipped) error {
	p := filepath.Join(out, "skipped.json")
	var all []skipped
	if b, err := os.ReadFile(p); err == nil {
		if err := json.Unmarshal(b, &all); err != nil {
			return fmt.Errorf("%s: %w", p, err)
		}
	}
	seen := map[string]bool{}
	var merged []skipped
	for _, s := range append(all, skips...) {
		if !seen[s.Image] {
			seen[s.Image] = true
			merged = append(merged, s)
		}
	}
	if len(merged) == 0 {
		return nil
	}
	sort.Slice(merged, func(i, j int) bool { return merged[i].Image < merged[j].Image })
	b, err := json.MarshalIndent(merged, "", " ")
	if err != nil {
		return err
	}
	return preference.WriteFileAtomic(p, append(b, '\n'))
}

// removeStaleTemps deletes the temporary files a killed run may have left
// (".NAME.tmp…", written before the rename that completes a file).
func removeStaleTemps(out string) error {
	for _, d := range []string{".", "hr", "lr", "records"} {
		es, err := os.ReadDir(filepath.Join(out, d))
		if err != nil {
			return err
		}
		for _, e := range es {
			if n := e.Name(); !e.IsDir() && strings.HasPrefix(n, ".") && strings.Contains(n, ".tmp") {
				if err := os.Remove(filepath.Join(out, d, n)); err != nil {
					return err
				}
			}
		}
	}
	return nil
}
