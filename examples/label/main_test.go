package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/dp2osr/dp2o/imageio"
	"github.com/dp2osr/dp2o/preference"
	"github.com/dp2osr/dp2o/preference/label"
	"github.com/dp2osr/dp2o/preference/sample"
)

func runApp(args ...string) (string, error) {
	app := newApp()
	var out, errOut bytes.Buffer
	app.Writer, app.ErrWriter = &out, &errOut
	err := app.RunContext(context.Background(), append([]string{"label"}, args...))
	return out.String() + errOut.String(), err
}

// blurSampler makes candidates of varying quality without a model: the LR
// enlarged ×2 with a seed-dependent mix of nearest and bilinear.
type blurSampler struct{}

func (blurSampler) Name() string { return "sd2" }

func (blurSampler) Candidates(_ context.Context, lr *imageio.RGB8, _ string, seeds []uint64) ([]*imageio.RGB8, error) {
	var out []*imageio.RGB8
	for _, s := range seeds {
		a := imageio.Resize(lr, 2*lr.W, 2*lr.H, imageio.Nearest)
		b := imageio.Resize(lr, 2*lr.W, 2*lr.H, imageio.Bilinear)
		w := int(s%5) + 1
		for i := range a.Pix {
			a.Pix[i] = uint8((int(a.Pix[i])*w + int(b.Pix[i])*(6-w)) / 6)
		}
		out = append(out, a)
	}
	return out, nil
}

func candidates(t *testing.T) string {
	root := t.TempDir()
	src, err := imageio.Load(filepath.Join("..", "..", "assets", "sample", "lr_house.png"))
	require.NoError(t, err)
	for _, d := range []string{"lr", "hr"} {
		require.NoError(t, os.MkdirAll(filepath.Join(root, "data", d), 0o755))
	}
	for i := 0; i < 2; i++ {
		hr := imageio.Resize(src, 32+8*i, 32, imageio.Bicubic)
		name := fmt.Sprintf("in%d.png", i)
		require.NoError(t, imageio.SavePNG(filepath.Join(root, "data", "hr", name), hr))
		require.NoError(t, imageio.SavePNG(filepath.Join(root, "data", "lr", name), imageio.Resize(hr, hr.W/2, hr.H/2, imageio.Bicubic)))
	}
	ins, err := sample.DataDirInputs(filepath.Join(root, "data"))
	require.NoError(t, err)
	dir := filepath.Join(root, "cands")
	cfg := sample.Config{Format: sample.Format, Settings: sample.Settings{Model: "sd2", Steps: 1}, Seeds: sample.SeedPool(0, 5), BatchSize: 5}
	_, err = sample.Run(context.Background(), sample.Job{Dir: dir, Config: cfg, Inputs: ins, Open: func() (sample.Sampler, error) { return blurSampler{}, nil }})
	require.NoError(t, err)
	_, err = sample.Merge(dir, ins)
	require.NoError(t, err)
	return dir
}

func TestHelpExplainsEveryFlag(t *testing.T) {
	out, err := runApp("--help")
	require.NoError(t, err)
	for _, f := range newApp().Flags {
		require.Contains(t, out, "--"+f.Names()[0])
	}
}

func TestLabelThenPairs(t *testing.T) {
	dir := candidates(t)
	msg, err := runApp("--candidates", dir, "--metrics", "psnr,ssim", "--quiet")
	require.NoError(t, err, msg)
	require.Contains(t, msg, "2 inputs × 2 metrics (psnr, ssim): 4 scored now")
	l, err := label.Load(filepath.Join(dir, label.LabelsFile))
	require.NoError(t, err)
	require.Len(t, l.Groups, 2)
	pf, err := preference.BuildPairs(l.Groups, l.RewardMetrics(), 2)
	require.NoError(t, err)
	require.Len(t, pf.Pairs, 2*2*2)

	// A metric added later is scored alone; a rerun scores nothing.
	msg, err = runApp("--candidates", dir, "--metrics", "psnr,ssim,ssimc", "--quiet", "--output", filepath.Join(dir, "l3.json"))
	require.NoError(t, err, msg)
	require.Contains(t, msg, "2 scored now, 4 already there")
	msg, err = runApp("--candidates", dir, "--metrics", "psnr", "--quiet")
	require.NoError(t, err, msg)
	require.Contains(t, msg, "0 scored now")
}

func TestClearErrors(t *testing.T) {
	dir := candidates(t)
	_, err := runApp("--candidates", dir, "--metrics", "nosuch", "--quiet")
	require.ErrorContains(t, err, `unknown metric "nosuch"`)
	_, err = runApp("--candidates", dir, "--metrics", "psnr", "--weight", "psnr", "--quiet")
	require.ErrorContains(t, err, "name=path")
	_, err = runApp("--candidates", t.TempDir(), "--metrics", "psnr", "--quiet")
	require.ErrorContains(t, err, "run the sample step")
	_, err = runApp("--candidates", dir, "--metrics", ",", "--quiet")
	require.ErrorContains(t, err, "--metrics")
}
