package main

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/dp2osr/dp2o/imageio"
	"github.com/dp2osr/dp2o/internal/testutil"
)

// The bundled tiny model and sample, relative to this package.
var (
	tinyBase       = filepath.Join("..", "..", defaultBase)
	tinyControlNet = filepath.Join("..", "..", defaultControlNet)
	sampleDir      = filepath.Join("..", "..", defaultImages)
)

// sr runs the CLI in-process on the tiny model with small, fast settings.
func sr(t *testing.T, args ...string) error {
	t.Helper()
	base := []string{"sr", "--quiet", "--device", "cpu",
		"--pretrained_model_name_or_path", tinyBase, "--controlnet_model_name_or_path", tinyControlNet,
		"--process_size", "64", "--num_inference_steps", "2"}
	return newApp().Run(append(base, args...))
}

func listDir(t *testing.T, dir string) []string {
	t.Helper()
	es, err := os.ReadDir(dir)
	require.NoError(t, err)
	var names []string
	for _, e := range es {
		names = append(names, e.Name())
	}
	return names
}

func TestSRSample(t *testing.T) {
	testutil.NoLeak(t)
	out := t.TempDir()
	require.NoError(t, sr(t, "--image_path", sampleDir, "--output_dir", out, "--upscale", "2", "--prompt", "house, tree, sky"))
	img, err := imageio.Load(filepath.Join(out, "lr_house.png"))
	require.NoError(t, err)
	require.Equal(t, [2]int{256, 256}, [2]int{img.W, img.H}, "output is the input size × upscale")
}

func TestSRVAETiling(t *testing.T) {
	out := t.TempDir()
	require.NoError(t, sr(t, "--image_path", sampleDir, "--output_dir", out, "--vae_tiling", "--process_size", "128"))
	require.Equal(t, []string{"lr_house.png"}, listDir(t, out))
}

func TestSRSampleTimesWritesEachSample(t *testing.T) {
	out := t.TempDir()
	require.NoError(t, sr(t, "--image_path", filepath.Join(sampleDir, "lr_house.png"), "--output_dir", out, "--sample_times", "2"))
	require.ElementsMatch(t, []string{"lr_house_0.png", "lr_house_1.png"}, listDir(t, out))
}

func TestSRBadInput(t *testing.T) {
	dir := t.TempDir()
	write := func(name string, data []byte) string {
		p := filepath.Join(dir, name)
		require.NoError(t, os.WriteFile(p, data, 0o644))
		return p
	}
	zero := write("zero.png", nil)
	corrupt := write("corrupt.png", []byte("\x89PNG\r\n\x1a\nnot really a png"))
	badCN := write("other.safetensors", []byte("{}"))
	tiny := filepath.Join(dir, "tiny.png")
	require.NoError(t, imageio.SavePNG(tiny, imageio.NewRGB8(1, 1)))
	cases := []struct {
		name string
		args []string
		want string
	}{
		{"zero-sized image", []string{"--image_path", zero}, "empty"},
		{"corrupt image", []string{"--image_path", corrupt}, "decode"},
		{"missing input", []string{"--image_path", filepath.Join(dir, "nope.png")}, "no such file"},
		{"empty folder", []string{"--image_path", t.TempDir()}, "no images"},
		{"bad align method", []string{"--image_path", sampleDir, "--align_method", "median"}, "align"},
		{"zero upscale", []string{"--image_path", sampleDir, "--upscale", "0"}, "--upscale"},
		{"cuda without a GPU", []string{"--image_path", sampleDir, "--device", "cuda:7"}, "CUDA"},
		{"not a model folder", []string{"--image_path", sampleDir, "--pretrained_model_name_or_path", dir}, "missing tokenizer/"},
		{"controlnet of another model", []string{"--image_path", sampleDir, "--controlnet_model_name_or_path",
			filepath.Join(tinyBase, "unet", "diffusion_pytorch_model.safetensors")}, "not a ControlNet checkpoint"},
		{"corrupt controlnet file", []string{"--image_path", sampleDir, "--controlnet_model_name_or_path", badCN}, "safetensors"},
		{"image too large for the settings", []string{"--image_path", sampleDir, "--upscale", "64", "--process_size", "8192"}, "exceeds the limit"},
		{"image too small for the settings", []string{"--image_path", tiny, "--upscale", "3", "--process_size", "8"}, "plan"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if c.name == "cuda without a GPU" && os.Getenv("DP2O_DEVICE") == "cuda" {
				t.Skip("this machine has CUDA")
			}
			out := filepath.Join(t.TempDir(), "out")
			err := sr(t, append([]string{"--output_dir", out}, c.args...)...)
			require.Error(t, err)
			require.Contains(t, err.Error(), c.want)
			if _, statErr := os.Stat(out); statErr == nil {
				require.Empty(t, listDir(t, out), "nothing may be written for a failed run")
			}
		})
	}
}

// The bundled tiny FLUX model, relative to this package.
var (
	tinyFluxBase       = filepath.Join("..", "..", defaultFluxBase)
	tinyFluxControlNet = filepath.Join("..", "..", defaultFluxControlNet)
)

// srFlux runs --model flux in-process on the tiny FLUX model.
func srFlux(t *testing.T, args ...string) error {
	t.Helper()
	base := []string{"sr", "--model", "flux", "--quiet", "--device", "cpu",
		"--pretrained_model_name_or_path", tinyFluxBase, "--controlnet_model_name_or_path", tinyFluxControlNet,
		"--process_size", "64", "--num_inference_steps", "2"}
	return newApp().Run(append(base, args...))
}

func TestSRFlux(t *testing.T) {
	testutil.NoLeak(t)
	out := t.TempDir()
	require.NoError(t, srFlux(t, "--image_path", sampleDir, "--output_dir", out, "--upscale", "2", "--prompt", "house, tree, sky",
		"--guidance_scale", "2.5", "--control_scale", "0.8"))
	img, err := imageio.Load(filepath.Join(out, "lr_house.png"))
	require.NoError(t, err)
	src, err := imageio.Load(filepath.Join(sampleDir, "lr_house.png"))
	require.NoError(t, err)
	require.Equal(t, [2]int{2 * src.W, 2 * src.H}, [2]int{img.W, img.H}, "output is the input size × upscale")

	// Same seed, same output.
	out2 := t.TempDir()
	require.NoError(t, srFlux(t, "--image_path", sampleDir, "--output_dir", out2, "--upscale", "2", "--prompt", "house, tree, sky",
		"--guidance_scale", "2.5", "--control_scale", "0.8"))
	again, err := imageio.Load(filepath.Join(out2, "lr_house.png"))
	require.NoError(t, err)
	require.Equal(t, img.Pix, again.Pix)
}

func TestSRFluxVAETiling(t *testing.T) {
	out := t.TempDir()
	require.NoError(t, srFlux(t, "--image_path", sampleDir, "--output_dir", out, "--vae_tiling", "--process_size", "128"))
	require.Equal(t, []string{"lr_house.png"}, listDir(t, out))
}

// TestSRFluxTaggerFlags: --model flux prompts as the SD2 path does: the
// tagger is loaded when there is no --prompt (a bad checkpoint is a clear
// error before any output), and not at all with --prompt.
func TestSRFluxTaggerFlags(t *testing.T) {
	testutil.NoLeak(t)
	out := t.TempDir()
	bad := filepath.Join(t.TempDir(), "ram.pth")
	require.NoError(t, os.WriteFile(bad, []byte("not a checkpoint"), 0o644))
	err := srFlux(t, "--image_path", sampleDir, "--output_dir", out, "--ram_path", bad, "--dape_path", bad)
	require.ErrorContains(t, err, "tagger: ram checkpoint")
	require.Empty(t, listDir(t, out))
	require.NoError(t, srFlux(t, "--image_path", sampleDir, "--output_dir", out, "--prompt", "house", "--ram_path", bad))
	require.Equal(t, []string{"lr_house.png"}, listDir(t, out))
}

func TestSRFluxBadInput(t *testing.T) {
	out := t.TempDir()
	// The sample enlarged to a 200-pixel short side: a multiple of 8 but
	// not of 16, where the official pipeline fails; here it is a clear
	// per-image error, or padded with --pad16.
	err := srFlux(t, "--image_path", sampleDir, "--output_dir", out, "--process_size", "200")
	require.ErrorContains(t, err, "multiples of 16")
	require.NoError(t, srFlux(t, "--image_path", sampleDir, "--output_dir", out, "--process_size", "200", "--pad16"))
	require.ErrorContains(t, srFlux(t, "--image_path", sampleDir, "--output_dir", out, "--num_double_layers", "0"), "num_double_layers")
	require.ErrorContains(t, srFlux(t, "--image_path", sampleDir, "--output_dir", out, "--pretrained_model_name_or_path", t.TempDir()), "not a FLUX.1 folder")
	require.ErrorContains(t, newApp().Run([]string{"sr", "--model", "sdxl"}), "--model")
}
