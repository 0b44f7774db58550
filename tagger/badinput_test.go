package tagger

import (
	"image"
	"image/color"
	"image/png"
	"math"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/dp2osr/dp2o/imageio"
	"github.com/dp2osr/dp2o/internal/testutil"
	"github.com/dp2osr/dp2o/torch"
	"github.com/dp2osr/dp2o/torch/pickle"
)

func writePNG(t *testing.T, img image.Image) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "x.png")
	f, err := os.Create(p)
	require.NoError(t, err)
	require.NoError(t, png.Encode(f, img))
	require.NoError(t, f.Close())
	return p
}

// TestImageModes: gray, RGBA, 16-bit, palette and tiny images load as PIL's
// convert("RGB") gives them and preprocess to the model's input size.
func TestImageModes(t *testing.T) {
	testutil.NoLeak(t)
	size := fixtureConfig(t).Vision.ImageSize
	gray := image.NewGray(image.Rect(0, 0, 5, 3))
	rgba := image.NewNRGBA(image.Rect(0, 0, 5, 3))
	rgb16 := image.NewNRGBA64(image.Rect(0, 0, 5, 3))
	pal := image.NewPaletted(image.Rect(0, 0, 5, 3), color.Palette{color.RGBA{10, 20, 30, 255}, color.RGBA{200, 100, 50, 255}})
	for y := 0; y < 3; y++ {
		for x := 0; x < 5; x++ {
			v := uint8(40*y + 7*x)
			gray.SetGray(x, y, color.Gray{v})
			rgba.SetNRGBA(x, y, color.NRGBA{v, 255 - v, v / 2, uint8(x * 50)})
			rgb16.SetNRGBA64(x, y, color.NRGBA64{uint16(v)<<8 | 0xff, uint16(255-v) << 8, 0x1234, 0xffff})
			pal.SetColorIndex(x, y, uint8((x+y)%2))
		}
	}
	rgbOf := func(img *imageio.RGB8, x, y int) [3]uint8 {
		r, g, b := img.At(x, y)
		return [3]uint8{r, g, b}
	}
	for name, tc := range map[string]struct {
		img  image.Image
		want func(x, y int) [3]uint8
	}{
		"gray": {gray, func(x, y int) [3]uint8 { v := gray.GrayAt(x, y).Y; return [3]uint8{v, v, v} }},
		"rgba": {rgba, func(x, y int) [3]uint8 { c := rgba.NRGBAAt(x, y); return [3]uint8{c.R, c.G, c.B} }}, // alpha dropped, not composited
		"16-bit": {rgb16, func(x, y int) [3]uint8 {
			c := rgb16.NRGBA64At(x, y)
			return [3]uint8{uint8(c.R >> 8), uint8(c.G >> 8), uint8(c.B >> 8)}
		}},
		"palette": {pal, func(x, y int) [3]uint8 {
			c := pal.Palette[pal.ColorIndexAt(x, y)].(color.RGBA)
			return [3]uint8{c.R, c.G, c.B}
		}},
	} {
		t.Run(name, func(t *testing.T) {
			img, err := imageio.Load(writePNG(t, tc.img))
			require.NoError(t, err)
			for y := 0; y < img.H; y++ {
				for x := 0; x < img.W; x++ {
					require.Equal(t, tc.want(x, y), rgbOf(img, x, y), "pixel %d,%d", x, y)
				}
			}
			x, err := Preprocess(img, size, torch.CPU)
			require.NoError(t, err)
			require.Equal(t, []int64{1, 3, size, size}, x.Shape())
			for _, v := range x.Float32s() {
				require.False(t, math.IsNaN(float64(v)) || math.IsInf(float64(v), 0))
			}
			x.Close()
		})
	}
	t.Run("tiny", func(t *testing.T) {
		img := imageio.NewRGB8(1, 1)
		img.Set(0, 0, 255, 0, 128)
		x, err := Preprocess(img, size, torch.CPU)
		require.NoError(t, err)
		defer x.Close()
		require.Equal(t, []int64{1, 3, size, size}, x.Shape())
		// A constant image stays constant: (v/255 − mean)/std per channel.
		v := x.Float32s()
		n := int(size * size)
		for c, want := range []float64{(1 - 0.485) / 0.229, (0 - 0.456) / 0.224, (128.0/255 - 0.406) / 0.225} {
			require.InDelta(t, want, v[c*n], 1e-5)
			require.InDelta(t, want, v[c*n+n-1], 1e-5)
		}
	})
	t.Run("invalid", func(t *testing.T) {
		_, err := Preprocess(&imageio.RGB8{W: 0, H: 3}, size, torch.CPU)
		require.Error(t, err)
		_, err = Preprocess(nil, size, torch.CPU)
		require.Error(t, err)
		x := torch.Zeros([]int64{1, 4, 8, 8}, torch.Float32, torch.CPU)
		defer x.Close()
		_, err = Normalize(x, size, true)
		require.ErrorContains(t, err, "(B, 3, H, W)")
	})
}

// TestBadCheckpoints: missing, truncated, foreign and wrongly wrapped files
// are clear errors.
func TestBadCheckpoints(t *testing.T) {
	testutil.NoLeak(t)
	cfg := fixtureConfig(t)
	dir := t.TempDir()
	f32 := func(n int) []byte { return make([]byte, 4*n) }
	small := []pickle.Tensor{{Name: "label_embed", DType: "F32", Shape: []int64{2, 3}, Data: f32(6)}}
	wrapped := filepath.Join(dir, "wrapped.pth")
	require.NoError(t, pickle.Save(wrapped, "model", small))
	flat := filepath.Join(dir, "flat.pth")
	require.NoError(t, pickle.Save(flat, "", small))
	foreign := filepath.Join(dir, "foreign.pth")
	require.NoError(t, pickle.Save(foreign, "model", []pickle.Tensor{{Name: "conv_in.weight", DType: "F32", Shape: []int64{4}, Data: f32(4)}}))
	whole, err := os.ReadFile(wrapped)
	require.NoError(t, err)
	truncated := filepath.Join(dir, "truncated.pth")
	require.NoError(t, os.WriteFile(truncated, whole[:len(whole)/2], 0o644))
	garbage := filepath.Join(dir, "garbage.pth")
	require.NoError(t, os.WriteFile(garbage, []byte("not a checkpoint at all"), 0o644))

	for name, tc := range map[string]struct {
		path, want string
	}{
		"missing file":        {filepath.Join(dir, "nope.pth"), "nope.pth"},
		"truncated":           {truncated, "zip"},
		"garbage":             {garbage, "not a PyTorch zip checkpoint"},
		"no model entry":      {flat, `"model"`},
		"another model":       {foreign, "not a RAM/DAPE checkpoint"},
		"other layout (tiny)": {wrapped, "label_embed: checkpoint [2 3]"},
	} {
		t.Run(name, func(t *testing.T) {
			tg, err := LoadRAM(tc.path, cfg, torch.CPU)
			require.Nil(t, tg)
			require.ErrorContains(t, err, tc.want)
		})
	}

	// DAPE files: checked before any weight changes.
	ram, err := readLayout("ram/keys/ram_swin_large_14m.model.json")
	require.NoError(t, err)
	tg, err := FromRAMState(metaState(t, ram, func(s string) string { return s }), cfg, torch.Meta)
	require.NoError(t, err)
	defer tg.Close()
	require.ErrorContains(t, tg.LoadDAPE(truncated), "zip")
	require.ErrorContains(t, tg.LoadDAPE(filepath.Join(dir, "nope.pth")), "nope.pth")
	require.ErrorIs(t, tg.LoadDAPE(flat), ErrLayout)
	require.ErrorContains(t, tg.LoadDAPE(wrapped), "dict of tensors")

	// Tag lists and thresholds.
	_, err = Options{TagList: filepath.Join(dir, "nope.txt")}.Config()
	require.ErrorContains(t, err, "nope.txt")
	bad := filepath.Join(dir, "thr.txt")
	require.NoError(t, os.WriteFile(bad, []byte("0.5\nabc\n"), 0o644))
	_, err = Options{Thresholds: bad}.Config()
	require.ErrorContains(t, err, "line 2")
}

// TestTagListAndThresholds: Python's splitlines and the threshold rule.
func TestTagListAndThresholds(t *testing.T) {
	require.Equal(t, []string{"a", "b", "", "c"}, SplitLines("a\nb\r\n\rc"))
	require.Equal(t, []string{"a"}, SplitLines("a\n"))
	require.Empty(t, SplitLines(""))
	thr, err := ParseThresholds("0.95\n0.5\n", 3)
	require.NoError(t, err)
	require.Equal(t, []float32{0.95, 0.5, float32(DefaultThreshold)}, thr)
	_, err = ParseThresholds("0.5\n0.5\n", 1)
	require.Error(t, err)

	// The fixture's files: the count of data.json, the embedded copies the same.
	tags, err := ReadTagList(fixturePath("ram/data/ram_tag_list.txt"))
	require.NoError(t, err)
	embedded, err := ReadTagList("")
	require.NoError(t, err)
	require.Equal(t, tags, embedded)
	ft, err := ReadThresholds(fixturePath("ram/data/ram_tag_list_threshold.txt"), len(tags))
	require.NoError(t, err)
	et, err := ReadThresholds("", len(tags))
	require.NoError(t, err)
	require.Equal(t, ft, et)
	require.Equal(t, "a, b", JoinTags([]string{"a", "b"}))
	require.Equal(t, "", JoinTags(nil))
}
