package diffusion

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/dp2osr/dp2o/imageio"
	"github.com/dp2osr/dp2o/internal/testutil"
	"github.com/dp2osr/dp2o/torch"
)

// The bundled tiny model in the SD2-base folder layout.
var (
	tinyBase       = filepath.Join("..", "assets", "tiny-sd2")
	tinyControlNet = filepath.Join(tinyBase, "controlnet", "model.safetensors")
)

// copyTree copies the bundled model so a test can break it.
func copyTree(t *testing.T, src string) string {
	t.Helper()
	dst := t.TempDir()
	require.NoError(t, filepath.Walk(src, func(p string, info os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, p)
		if info.IsDir() {
			return os.MkdirAll(filepath.Join(dst, rel), 0o755)
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		return os.WriteFile(filepath.Join(dst, rel), b, 0o644)
	}))
	return dst
}

func TestLoadSD2AndUpscale(t *testing.T) {
	testutil.NoLeak(t)
	dev := testutil.Device(t)
	p, err := LoadSD2(tinyBase, tinyControlNet, LoadOptions{Device: dev})
	require.NoError(t, err)
	defer p.Close()
	img := imageio.NewRGB8(40, 24)
	for i := range img.Pix {
		img.Pix[i] = uint8(i * 7)
	}
	o := DefaultUpscaleOptions()
	o.Steps, o.ProcessSize, o.Upscale, o.Prompt = 3, 32, 2, "stripes"
	gen := torch.MustGenerator(torch.CPU, 0)
	a, err := p.Upscale(context.Background(), img, o, gen)
	require.NoError(t, err)
	require.Equal(t, [2]int{80, 48}, [2]int{a.W, a.H}, "output is input × upscale")

	// Same seed, same output; the generator moves on between calls as in
	// the official script, so a second call differs.
	b, err := p.Upscale(context.Background(), img, o, gen)
	require.NoError(t, err)
	require.NotEqual(t, a.Pix, b.Pix)
	c, err := p.Upscale(context.Background(), img, o, torch.MustGenerator(torch.CPU, 0))
	require.NoError(t, err)
	require.Equal(t, a.Pix, c.Pix)
}

// TestLoadSD2FlatControlNet loads the ControlNet as DP²O-SR releases it, a
// model.safetensors without a config.json: its conditioning layout comes
// from the file and equals the one its config.json states.
func TestLoadSD2FlatControlNet(t *testing.T) {
	testutil.NoLeak(t)
	withConfig, err := LoadSD2(tinyBase, tinyControlNet, LoadOptions{Device: torch.CPU})
	require.NoError(t, err)
	defer withConfig.Close()

	dir := t.TempDir()
	data, err := os.ReadFile(tinyControlNet)
	require.NoError(t, err)
	flat := filepath.Join(dir, "model.safetensors")
	require.NoError(t, os.WriteFile(flat, data, 0o644))
	p, err := LoadSD2(tinyBase, flat, LoadOptions{Device: torch.CPU})
	require.NoError(t, err)
	defer p.Close()
	require.Equal(t, withConfig.ControlNet.Config.ConditioningEmbeddingOutChannels, p.ControlNet.Config.ConditioningEmbeddingOutChannels)
	require.Equal(t, withConfig.ControlNet.Config.ConditioningChannels, p.ControlNet.Config.ConditioningChannels)
}

func TestLoadSD2Errors(t *testing.T) {
	testutil.NoLeak(t)
	cases := []struct {
		name    string
		breakIt func(dir string) (base, cn string)
		want    string
	}{
		{"missing unet weights", func(d string) (string, string) {
			require.NoError(t, os.Remove(filepath.Join(d, "unet", "diffusion_pytorch_model.safetensors")))
			return d, filepath.Join(d, "controlnet", "model.safetensors")
		}, "diffusion_pytorch_model.safetensors"},
		{"missing scheduler folder", func(d string) (string, string) {
			require.NoError(t, os.RemoveAll(filepath.Join(d, "scheduler")))
			return d, filepath.Join(d, "controlnet", "model.safetensors")
		}, "scheduler/"},
		{"missing vocab", func(d string) (string, string) {
			require.NoError(t, os.Remove(filepath.Join(d, "tokenizer", "vocab.json")))
			return d, filepath.Join(d, "controlnet", "model.safetensors")
		}, "vocab.json"},
		{"truncated vae weights", func(d string) (string, string) {
			p := filepath.Join(d, "vae", "diffusion_pytorch_model.safetensors")
			b, err := os.ReadFile(p)
			require.NoError(t, err)
			require.NoError(t, os.WriteFile(p, b[:len(b)/2], 0o644))
			return d, filepath.Join(d, "controlnet", "model.safetensors")
		}, "vae"},
		{"controlnet of another model", func(d string) (string, string) {
			return d, filepath.Join(d, "unet", "diffusion_pytorch_model.safetensors")
		}, "not a ControlNet checkpoint"},
		{"controlnet config disagreeing with its weights", func(d string) (string, string) {
			p := filepath.Join(d, "controlnet", "config.json")
			var cfg map[string]any
			b, err := os.ReadFile(p)
			require.NoError(t, err)
			require.NoError(t, json.Unmarshal(b, &cfg))
			w := cfg["conditioning_embedding_out_channels"].([]any)
			w[0] = w[0].(float64) + 1
			b, err = json.Marshal(cfg)
			require.NoError(t, err)
			require.NoError(t, os.WriteFile(p, b, 0o644))
			return d, filepath.Join(d, "controlnet", "model.safetensors")
		}, "config.json says"},
		{"missing controlnet", func(d string) (string, string) {
			return d, filepath.Join(d, "nope.safetensors")
		}, "nope.safetensors"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			base, cn := c.breakIt(copyTree(t, tinyBase))
			p, err := LoadSD2(base, cn, LoadOptions{Device: torch.CPU})
			require.Error(t, err)
			require.Nil(t, p)
			require.Contains(t, err.Error(), c.want)
		})
	}
}
