package vae

import (
	"math"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/dp2osr/dp2o/internal/testutil"
	"github.com/dp2osr/dp2o/torch"
)

// smoothImage is a (1, 3, h, w) image in [-1, 1] made of low-frequency
// waves, so that its latents look like a real image's.
func smoothImage(h, w int, dev torch.Device) *torch.Tensor {
	data := make([]float32, 3*h*w)
	for c := range 3 {
		for y := range h {
			for x := range w {
				v := 0.6 * math.Sin(float64(x)/17+float64(c)) * math.Cos(float64(y)/23-float64(c)/2)
				v += 0.3 * math.Sin(float64(x+y)/41+2*float64(c))
				data[(c*h+y)*w+x] = float32(v)
			}
		}
	}
	t := torch.FromSlice(data, 1, 3, int64(h), int64(w))
	if dev == torch.CPU {
		return t
	}
	defer t.Close()
	return t.ToDevice(dev)
}

func maxAbsDiff(t *testing.T, a, b *torch.Tensor) float64 {
	t.Helper()
	ac, bc := onCPU(a), onCPU(b)
	defer ac.Close()
	defer bc.Close()
	d, _, err := testutil.Diff(ac, bc, 0, 0)
	require.NoError(t, err)
	return d
}

// TestTiledDecode decodes latents larger than one tile (the tiny model's
// sample_size 128 gives 16×16 latent tiles, a stride of 12 and a 32-pixel
// blend) whose sizes are not multiples of the tile or the stride.
func TestTiledDecode(t *testing.T) {
	testutil.NoLeak(t)
	s := torch.NewScope()
	defer s.Close()
	m := loadTiny(t)
	dev := testutil.Device(t)
	img := smoothImage(37*8, 29*8, dev)
	post, err := m.Encode(img)
	require.NoError(t, err)
	z := post.Mean

	full, err := m.Decode(z)
	require.NoError(t, err)
	m.Tiling = Tiling{Enabled: true}
	tiled, err := m.Decode(z)
	require.NoError(t, err)
	require.Equal(t, full.Shape(), tiled.Shape())
	// Blending is not exact: every tile is decoded without its
	// neighbours' context (GroupNorm statistics, attention, zero padding at
	// its edges), and the random tiny model is very sensitive to that. What
	// blending guarantees is that each output pixel is a convex combination
	// of the tiles' values there, so the tiled result is never further from
	// the untiled one than the worst tile decoded alone.
	d := maxAbsDiff(t, tiled, full)
	worst := worstTile(t, m, z, full)
	t.Logf("tiled vs untiled decode (latent 37×29, |out| ≤ %.2f): max |diff| %.3g, mean |diff| %.3g (mean |out| %.3g); worst single tile vs untiled %.3g",
		absMax(t, full), d, meanAbsDiff(t, tiled, full), meanAbs(t, full), worst)
	require.LessOrEqual(t, d, worst+1e-5)

	// Tile (0,0) is never blended: its top-left 96×96 pixels are the
	// decoder's output for the first 16×16 latents alone.
	t00 := m.decodeTile(z.Slice(2, 0, 16, 1).Slice(3, 0, 16, 1), nil)
	require.Zero(t, maxAbsDiff(t, tiled.Slice(2, 0, 96, 1).Slice(3, 0, 96, 1), t00.Slice(2, 0, 96, 1).Slice(3, 0, 96, 1)))

	// In the first row of tiles only blend_h acts: output column 96+x is
	// tile(0,0)'s column 96+x·(1−x/32) + tile(0,1)'s column x·(x/32).
	t01 := m.decodeTile(z.Slice(2, 0, 16, 1).Slice(3, 12, 28, 1), nil)
	for x := range int64(32) {
		w := float64(x) / 32
		want := t00.Slice(2, 0, 96, 1).Select(3, 96+x).MulScalar(1 - w).Add(t01.Slice(2, 0, 96, 1).Select(3, x).MulScalar(w))
		got := tiled.Slice(2, 0, 96, 1).Select(3, 96+x)
		require.LessOrEqual(t, maxAbsDiff(t, got, want), 1e-6, "column %d", 96+x)
	}
	// Past the blend, tile(0,1) is copied as decoded.
	require.Zero(t, maxAbsDiff(t, tiled.Slice(2, 0, 96, 1).Slice(3, 128, 192, 1), t01.Slice(2, 0, 96, 1).Slice(3, 32, 96, 1)))

	// Odd sizes, including last tiles narrower than the blend (1 latent
	// row = 8 pixels < 32) and inputs of exactly one tile (not tiled).
	for _, hw := range [][2]int64{{17, 17}, {25, 13}, {16, 16}, {16, 40}, {9, 33}} {
		zz := torch.Randn([]int64{1, 4, hw[0], hw[1]}, torch.MustGenerator(torch.CPU, 3), torch.Float32, torch.CPU).ToDevice(dev)
		m.Tiling.Enabled = false
		a, err := m.Decode(zz)
		require.NoError(t, err)
		m.Tiling.Enabled = true
		b, err := m.Decode(zz)
		require.NoError(t, err)
		require.Equal(t, a.Shape(), b.Shape(), "latent %v", hw)
		if hw[0] <= 16 && hw[1] <= 16 {
			require.Zero(t, maxAbsDiff(t, a, b), "one tile is not tiled")
		}
	}
}

// TestTiledEncode encodes an image larger than one 128-pixel tile, with
// sizes that are not multiples of the 96-pixel stride.
func TestTiledEncode(t *testing.T) {
	testutil.NoLeak(t)
	s := torch.NewScope()
	defer s.Close()
	m := loadTiny(t)
	dev := testutil.Device(t)
	img := smoothImage(296, 232, dev)
	full, err := m.Encode(img)
	require.NoError(t, err)
	m.Tiling = Tiling{Enabled: true}
	tiled, err := m.Encode(img)
	require.NoError(t, err)
	require.Equal(t, full.Mean.Shape(), tiled.Mean.Shape())
	d := maxAbsDiff(t, tiled.Mean, full.Mean)
	t.Logf("tiled vs untiled encode (image 296×232, |mean| ≤ %.2f): max |diff| of the mean %.3g, mean |diff| %.3g (mean |mean| %.3g)",
		absMax(t, full.Mean), d, meanAbsDiff(t, tiled.Mean, full.Mean), meanAbs(t, full.Mean))

	// Tile (0,0)'s top-left 12×12 moments are unblended.
	t00 := m.encodeMoments(img.Slice(2, 0, 128, 1).Slice(3, 0, 128, 1), nil)
	want := t00.Chunk(2, 1)[0].Slice(2, 0, 12, 1).Slice(3, 0, 12, 1)
	require.Zero(t, maxAbsDiff(t, tiled.Mean.Slice(2, 0, 12, 1).Slice(3, 0, 12, 1), want))

	// A custom tile size and overlap.
	m.Tiling = Tiling{Enabled: true, TileSize: 64, Overlap: 0.5}
	small, err := m.Encode(img)
	require.NoError(t, err)
	require.Equal(t, full.Mean.Shape(), small.Mean.Shape())
}

func TestSlicing(t *testing.T) {
	testutil.NoLeak(t)
	s := torch.NewScope()
	defer s.Close()
	m := loadTiny(t)
	z := torch.Randn([]int64{3, 4, 6, 5}, torch.MustGenerator(torch.CPU, 5), torch.Float32, torch.CPU).ToDevice(testutil.Device(t))
	a, err := m.Decode(z)
	require.NoError(t, err)
	m.Slicing = true
	b, err := m.Decode(z)
	require.NoError(t, err)
	require.LessOrEqual(t, maxAbsDiff(t, a, b), tolerance(t))
}

func absMax(t *testing.T, x *torch.Tensor) float64 {
	c := onCPU(x)
	defer c.Close()
	m := c.Abs().Max()
	defer m.Close()
	return m.Item()
}

func meanAbs(t *testing.T, x *torch.Tensor) float64 {
	s := torch.NewScope()
	defer s.Close()
	return x.Abs().Mean().Item()
}

func meanAbsDiff(t *testing.T, a, b *torch.Tensor) float64 {
	s := torch.NewScope()
	defer s.Close()
	return a.Sub(b).Abs().Mean().Item()
}

// worstTile decodes every tile of z's tiling alone and returns the largest
// difference between a tile and the untiled decode full over the pixels it
// covers.
func worstTile(t *testing.T, m *Model, z, full *torch.Tensor) float64 {
	s := torch.NewScope()
	defer s.Close()
	tl := int64(m.Tiling.latentTile(m.Config))
	stride := int64(float64(tl) * (1 - m.Tiling.overlap()))
	f := int64(m.Config.DownsampleFactor())
	worst := 0.0
	for i := int64(0); i < z.Size(2); i += stride {
		for j := int64(0); j < z.Size(3); j += stride {
			tile := m.decodeTile(z.Slice(2, i, i+tl, 1).Slice(3, j, j+tl, 1), nil)
			region := full.Slice(2, i*f, i*f+tile.Size(2), 1).Slice(3, j*f, j*f+tile.Size(3), 1)
			worst = max(worst, maxAbsDiff(t, tile, region))
		}
	}
	return worst
}
