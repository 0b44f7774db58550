package main

import (
	"bytes"
	"context"
	"encoding/csv"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/dp2osr/dp2o/imageio"
	"github.com/dp2osr/dp2o/preference/label"
	"github.com/dp2osr/dp2o/preference/sample"
)

func runApp(args ...string) (string, error) {
	app := newApp()
	var out, errOut bytes.Buffer
	app.Writer, app.ErrWriter = &out, &errOut
	err := app.RunContext(context.Background(), append([]string{"evaluate"}, args...))
	return out.String() + errOut.String(), err
}

// shiftSampler: candidates of varying quality without a model (the LR
// enlarged ×2, brightened by a seed-dependent amount).
type shiftSampler struct{}

func (shiftSampler) Name() string { return "sd2" }

func (shiftSampler) Candidates(_ context.Context, lr *imageio.RGB8, _ string, seeds []uint64) ([]*imageio.RGB8, error) {
	var out []*imageio.RGB8
	for _, s := range seeds {
		a := imageio.Resize(lr, 2*lr.W, 2*lr.H, imageio.Bicubic)
		for i := range a.Pix {
			a.Pix[i] = uint8(min(255, int(a.Pix[i])+int(s%7)*3))
		}
		out = append(out, a)
	}
	return out, nil
}

// labelled makes and labels (psnr, ssim) a candidate set of 2 inputs × m.
func labelled(t *testing.T, root string, m int) (string, string) {
	src, err := imageio.Load(filepath.Join("..", "..", "assets", "sample", "lr_house.png"))
	require.NoError(t, err)
	for _, d := range []string{"lr", "hr"} {
		require.NoError(t, os.MkdirAll(filepath.Join(root, "data", d), 0o755))
	}
	for i := 0; i < 2; i++ {
		hr := imageio.Resize(src, 32, 32+8*i, imageio.Bicubic)
		name := fmt.Sprintf("t%d.png", i)
		require.NoError(t, imageio.SavePNG(filepath.Join(root, "data", "hr", name), hr))
		require.NoError(t, imageio.SavePNG(filepath.Join(root, "data", "lr", name), imageio.Resize(hr, hr.W/2, hr.H/2, imageio.Bicubic)))
	}
	ins, err := sample.DataDirInputs(filepath.Join(root, "data"))
	require.NoError(t, err)
	dir := filepath.Join(root, "cands")
	cfg := sample.Config{Format: sample.Format, Settings: sample.Settings{Model: "sd2", Steps: 1}, Seeds: sample.SeedPool(0, m), BatchSize: 4}
	_, err = sample.Run(context.Background(), sample.Job{Dir: dir, Config: cfg, Inputs: ins, Open: func() (sample.Sampler, error) { return shiftSampler{}, nil }})
	require.NoError(t, err)
	_, err = sample.Merge(dir, ins)
	require.NoError(t, err)
	_, err = label.Run(context.Background(), label.Job{Dir: dir, Metrics: []string{"psnr", "ssim"}})
	require.NoError(t, err)
	return dir, filepath.Join(root, "data", "hr")
}

func TestHelpExplainsEveryFlag(t *testing.T) {
	for _, cmd := range newApp().Commands {
		out, err := runApp(cmd.Name, "--help")
		require.NoError(t, err)
		for _, f := range cmd.Flags {
			require.Contains(t, out, "--"+f.Names()[0], "%s --help", cmd.Name)
		}
	}
}

func TestCurves(t *testing.T) {
	dir, _ := labelled(t, t.TempDir(), 6)
	out := t.TempDir()
	msg, err := runApp("curves", "--candidates", "tiny="+dir, "--output_dir", out)
	require.NoError(t, err, msg)
	require.Contains(t, msg, "tiny: 2 images")
	f, err := os.Open(filepath.Join(out, "curves.csv"))
	require.NoError(t, err)
	defer f.Close()
	rows, err := csv.NewReader(f).ReadAll()
	require.NoError(t, err)
	require.Len(t, rows, 1+6)
	// Best@M never falls, Worst@M never rises, with M; at M = 1 all agree.
	for i := 2; i < len(rows); i++ {
		b0, _ := strconv.ParseFloat(rows[i-1][2], 64)
		b1, _ := strconv.ParseFloat(rows[i][2], 64)
		w0, _ := strconv.ParseFloat(rows[i-1][4], 64)
		w1, _ := strconv.ParseFloat(rows[i][4], 64)
		require.GreaterOrEqual(t, b1, b0-1e-9)
		require.LessOrEqual(t, w1, w0+1e-9)
	}
	require.Equal(t, rows[1][2], rows[1][3])
	require.Equal(t, rows[1][3], rows[1][4])
	st, err := os.Stat(filepath.Join(out, "curves.png"))
	require.NoError(t, err)
	require.Positive(t, st.Size())

	_, err = runApp("curves", "--candidates", dir, "--max_m", "7", "--output_dir", out)
	require.ErrorContains(t, err, "fewer than M = 7")
	_, err = runApp("curves", "--candidates", dir, "--metrics", "lpips", "--output_dir", out)
	require.ErrorContains(t, err, "not scored yet")
	_, err = runApp("curves", "--candidates", dir, "--estimator", "best", "--output_dir", out)
	require.ErrorContains(t, err, "--estimator")
}

func TestTable(t *testing.T) {
	dir, hr := labelled(t, t.TempDir(), 2)
	// The first candidates as one method's outputs, named as the HR images.
	outs := t.TempDir()
	recs, err := sample.ReadManifest(dir)
	require.NoError(t, err)
	for _, r := range recs {
		if r.Index == 0 {
			b, err := os.ReadFile(filepath.Join(dir, r.File))
			require.NoError(t, err)
			require.NoError(t, os.WriteFile(filepath.Join(outs, r.Input+".png"), b, 0o644))
		}
	}
	res := t.TempDir()
	msg, err := runApp("table", "--outputs", "first="+outs, "--outputs", "hr="+hr, "--hr_dir", hr, "--metrics", "psnr,ssim", "--output_dir", res, "--quiet")
	require.NoError(t, err, msg)
	require.Contains(t, msg, "| Metric | first | hr |")
	md, err := os.ReadFile(filepath.Join(res, "table.md"))
	require.NoError(t, err)
	require.Contains(t, string(md), "| SSIM↑ |")
	require.FileExists(t, filepath.Join(res, "table.csv"))

	_, err = runApp("table", "--outputs", outs, "--hr_dir", hr, "--metrics", "psnr,nosuch", "--quiet")
	require.ErrorContains(t, err, `unknown metric "nosuch"`)
	small := t.TempDir()
	img, err := imageio.Load(filepath.Join(outs, "t0.png"))
	require.NoError(t, err)
	require.NoError(t, imageio.SavePNG(filepath.Join(small, "t0.png"), imageio.Resize(img, 16, 16, imageio.Bicubic)))
	_, err = runApp("table", "--outputs", small, "--hr_dir", hr, "--metrics", "psnr", "--quiet")
	require.ErrorContains(t, err, "same size")
}

func TestModel(t *testing.T) {
	root := t.TempDir()
	labelled(t, root, 2) // makes the test folder root/data
	assets := filepath.Join("..", "..", "assets")
	out := filepath.Join(root, "eval")
	args := []string{"model", "--input_dir", filepath.Join(root, "data"), "--num_candidates", "4", "--batch_size", "2",
		"--num_inference_steps", "2", "--process_size", "32", "--upscale", "2", "--prompt", "house", "--device", "cpu",
		"--pretrained_model_name_or_path", filepath.Join(assets, "tiny-sd2"),
		"--controlnet_model_name_or_path", filepath.Join(assets, "tiny-sd2", "controlnet", "model.safetensors"),
		"--metrics", "psnr,ssim", "--output_dir", out, "--quiet"}
	msg, err := runApp(args...)
	require.NoError(t, err, msg)
	require.Contains(t, msg, "controlnet: 2 images")
	require.FileExists(t, filepath.Join(out, "curves.png"))
	recs, err := sample.ReadManifest(filepath.Join(out, "candidates"))
	require.NoError(t, err)
	require.Len(t, recs, 2*4)

	// A wrong metric fails before anything is sampled.
	out2 := filepath.Join(root, "eval2")
	args[len(args)-4], args[len(args)-2] = "psnr,nosuch", out2
	_, err = runApp(args...)
	require.ErrorContains(t, err, `unknown metric "nosuch"`)
	_, err = os.Stat(filepath.Join(out2, "candidates"))
	require.ErrorIs(t, err, os.ErrNotExist)
}
