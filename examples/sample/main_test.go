package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/dp2osr/dp2o/imageio"
	"github.com/dp2osr/dp2o/preference/sample"
)

var assets = filepath.Join("..", "..", "assets")

func runApp(args ...string) (string, error) {
	app := newApp()
	var out, errOut bytes.Buffer
	app.Writer, app.ErrWriter = &out, &errOut
	err := app.RunContext(context.Background(), append([]string{"sample"}, args...))
	return out.String() + errOut.String(), err
}

func TestHelpExplainsEveryFlag(t *testing.T) {
	out, err := runApp("--help")
	require.NoError(t, err)
	for _, f := range newApp().Flags {
		require.Contains(t, out, "--"+f.Names()[0], "the help does not list a flag")
	}
	out, err = runApp("merge", "--help")
	require.NoError(t, err)
	require.Contains(t, out, "duplicated")
}

// data makes a degrade-like folder with two small inputs.
func data(t *testing.T) string {
	dir := t.TempDir()
	src, err := imageio.Load(filepath.Join(assets, "sample", "lr_house.png"))
	require.NoError(t, err)
	for _, d := range []string{"lr", "hr"} {
		require.NoError(t, os.MkdirAll(filepath.Join(dir, d), 0o755))
	}
	for i, name := range []string{"a.png", "b.png"} {
		hr := imageio.Resize(src, 64+16*i, 64, imageio.Bicubic)
		require.NoError(t, imageio.SavePNG(filepath.Join(dir, "hr", name), hr))
		require.NoError(t, imageio.SavePNG(filepath.Join(dir, "lr", name), imageio.Resize(hr, hr.W/4, hr.H/4, imageio.Bicubic)))
	}
	return dir
}

// tinySD2Args are the flags of a small sampling run of the tiny SD2 models
// over input folder in (3 candidates of each input, 2 steps), then extra.
func tinySD2Args(in string, extra ...string) []string {
	return slices.Clip(append([]string{"--input_dir", in, "--num_candidates", "3", "--batch_size", "2",
		"--num_inference_steps", "2", "--process_size", "64", "--prompt", "house", "--device", "cpu", "--quiet",
		"--pretrained_model_name_or_path", filepath.Join(assets, "tiny-sd2"),
		"--controlnet_model_name_or_path", filepath.Join(assets, "tiny-sd2", "controlnet", "model.safetensors")}, extra...))
}

func TestShardsMergeAndRerun(t *testing.T) {
	in := data(t)
	out := filepath.Join(t.TempDir(), "cands")
	common := tinySD2Args(in, "--output_dir", out)
	for i := 0; i < 2; i++ {
		msg, err := runApp(append(common, "--shard", string(rune('0'+i)), "--num_shards", "2")...)
		require.NoError(t, err, msg)
		require.Contains(t, msg, "sample merge")
	}
	msg, err := runApp("merge", "--input_dir", in, "--output_dir", out)
	require.NoError(t, err, msg)
	require.Contains(t, msg, "6 candidates of 2 inputs from 2 shard manifests")
	recs, err := sample.ReadManifest(out)
	require.NoError(t, err)
	require.Len(t, recs, 6)
	for _, r := range recs {
		img, err := imageio.Load(filepath.Join(out, r.File))
		require.NoError(t, err)
		hr, err := imageio.Load(r.HR)
		require.NoError(t, err)
		require.Equal(t, [2]int{hr.W, hr.H}, [2]int{img.W, img.H}, "a candidate of --upscale 4 has the HR's size")
		require.Equal(t, "house", r.Prompt)
		require.Equal(t, 2, r.Settings.Steps)
	}

	// A rerun of the finished set does nothing; another noise pool is refused.
	msg, err = runApp(common...)
	require.NoError(t, err, msg)
	require.Contains(t, msg, "0 sampled now, 6 already there")
	_, err = runApp(append(common, "--seed", "5")...)
	require.ErrorContains(t, err, "another configuration")
}

func TestClearErrors(t *testing.T) {
	in := data(t)
	out := t.TempDir()
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"--input_dir", in, "--output_dir", out, "--model", "sdxl"}, `--model "sdxl"`},
		{[]string{"--output_dir", out}, "no inputs"},
		{[]string{"--input_dir", in, "--output_dir", out, "--shard", "2", "--num_shards", "2"}, "0 ≤ shard < num_shards"},
		{[]string{"--input_dir", in, "--output_dir", out, "--prompt", "x", "--prompts", "p.json"}, "one of --prompt"},
		{[]string{"--input_dir", in, "--output_dir", out, "--on_error", "ignore"}, "--on_error"},
		{[]string{"--lr_dir", filepath.Join(in, "lr"), "--hr_dir", t.TempDir(), "--output_dir", out}, "without an HR image"},
		{[]string{"--input_dir", in, "--output_dir", out, "--prompt", "x", "--device", "cpu", "--num_inference_steps", "1",
			"--pretrained_model_name_or_path", t.TempDir(), "--controlnet_model_name_or_path", filepath.Join(assets, "tiny-sd2", "controlnet", "model.safetensors")},
			"not a stable-diffusion-2-base folder"},
	} {
		_, err := runApp(c.args...)
		require.Error(t, err, strings.Join(c.args, " "))
		require.ErrorContains(t, err, c.want)
	}
}

func TestFLUX(t *testing.T) {
	in := data(t)
	out := filepath.Join(t.TempDir(), "flux")
	msg, err := runApp("--model", "flux", "--input_dir", in, "--output_dir", out, "--num_candidates", "2", "--batch_size", "2",
		"--num_inference_steps", "1", "--process_size", "64", "--prompt", "house", "--device", "cpu", "--quiet",
		"--pretrained_model_name_or_path", filepath.Join(assets, "tiny-flux"),
		"--controlnet_model_name_or_path", filepath.Join(assets, "tiny-flux", "controlnet", "model.safetensors"))
	require.NoError(t, err, msg)
	require.Contains(t, msg, "4 candidates of 2 inputs")
	cfg, err := sample.LoadConfig(out)
	require.NoError(t, err)
	require.Equal(t, "flux", cfg.Settings.Model)
	require.Equal(t, 2.5, cfg.Settings.GuidanceScale, "flux's default guidance is the paper's")
	require.Empty(t, cfg.Settings.NegativePrompt)
}
