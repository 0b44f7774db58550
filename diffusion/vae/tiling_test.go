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

// tileGeometry is the tiling of the model's config as diffusers derives it:
// ts-pixel tiles (sample_size), tl-latent tiles, the decode stride (in
// latents), blend and limit (in pixels), and for encoding the stride (in
// pixels), blend and limit (in latents).
type tileGeometry struct {
	f, ts, tl                     int64
	decStride, decBlend, decLimit int64
	encStride, encBlend, encLimit int64
	latentChannels                int64
}

func geometry(m *Model) tileGeometry {
	ov := m.Tiling.overlap()
	g := tileGeometry{
		f:              int64(m.Config.DownsampleFactor()),
		ts:             int64(m.Tiling.sampleTile(m.Config)),
		tl:             int64(m.Tiling.latentTile(m.Config)),
		latentChannels: int64(m.Config.LatentChannels),
	}
	g.decStride = int64(float64(g.tl) * (1 - ov))
	g.decBlend = int64(float64(g.ts) * ov)
	g.decLimit = g.ts - g.decBlend
	g.encStride = int64(float64(g.ts) * (1 - ov))
	g.encBlend = int64(float64(g.tl) * ov)
	g.encLimit = g.tl - g.encBlend
	return g
}

// TestTiledDecode decodes latents larger than one tile whose sizes are not
// multiples of the tile or the stride, with the tile geometry of the
// model's own config (sample_size, block count).
func TestTiledDecode(t *testing.T) {
	testutil.NoLeak(t)
	s := torch.NewScope()
	defer s.Close()
	m := loadTiny(t)
	dev := testutil.Device(t)
	m.Tiling = Tiling{Enabled: true}
	g := geometry(m)
	m.Tiling = Tiling{}
	require.Greater(t, g.decStride, int64(0))
	require.Greater(t, g.decBlend, int64(0))
	// Latents of two strides and a bit more by one stride and a bit more.
	hL, wL := g.tl+g.decStride+g.decStride/2+1, g.tl+g.decStride/2+1
	img := smoothImage(int(hL*g.f), int(wL*g.f), dev)
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
	t.Logf("tiled vs untiled decode (latent %d×%d, |out| ≤ %.2f): max |diff| %.3g, mean |diff| %.3g (mean |out| %.3g); worst single tile vs untiled %.3g",
		hL, wL, absMax(t, full), d, meanAbsDiff(t, tiled, full), meanAbs(t, full), worst)
	require.LessOrEqual(t, d, worst+1e-5)

	// Tile (0,0) is never blended: its top-left limit×limit pixels are the
	// decoder's output for the first tl×tl latents alone.
	L, B := g.decLimit, g.decBlend
	t00 := m.decodeTile(z.Slice(2, 0, g.tl, 1).Slice(3, 0, g.tl, 1), nil)
	require.Zero(t, maxAbsDiff(t, tiled.Slice(2, 0, L, 1).Slice(3, 0, L, 1), t00.Slice(2, 0, L, 1).Slice(3, 0, L, 1)))

	// In the first row of tiles only blend_h acts: output column L+x is
	// tile(0,0)'s column (ts−B)+x = L+x times 1−x/B plus tile(0,1)'s
	// column x times x/B.
	t01 := m.decodeTile(z.Slice(2, 0, g.tl, 1).Slice(3, g.decStride, g.decStride+g.tl, 1), nil)
	for x := range B {
		w := float64(x) / float64(B)
		want := t00.Slice(2, 0, L, 1).Select(3, L+x).MulScalar(1 - w).Add(t01.Slice(2, 0, L, 1).Select(3, x).MulScalar(w))
		got := tiled.Slice(2, 0, L, 1).Select(3, L+x)
		require.LessOrEqual(t, maxAbsDiff(t, got, want), 1e-6, "column %d", L+x)
	}
	// Past the blend, tile(0,1) is copied as decoded (up to its limit, or
	// the image's edge).
	end := min(L+L, wL*g.f)
	require.Zero(t, maxAbsDiff(t, tiled.Slice(2, 0, L, 1).Slice(3, L+B, end, 1), t01.Slice(2, 0, L, 1).Slice(3, B, end-L, 1)))

	// Odd sizes, including last tiles narrower than the blend and inputs
	// of exactly one tile (not tiled).
	tl := g.tl
	for _, hw := range [][2]int64{{tl + 1, tl + 1}, {tl + tl/2 + 1, max(tl-3, 1)}, {tl, tl}, {tl, 2*tl + tl/2}, {tl/2 + 1, 2*tl + 1}} {
		zz := torch.Randn([]int64{1, g.latentChannels, hw[0], hw[1]}, torch.MustGenerator(torch.CPU, 3), torch.Float32, torch.CPU).ToDevice(dev)
		m.Tiling.Enabled = false
		a, err := m.Decode(zz)
		require.NoError(t, err)
		m.Tiling.Enabled = true
		b, err := m.Decode(zz)
		require.NoError(t, err)
		require.Equal(t, a.Shape(), b.Shape(), "latent %v", hw)
		if hw[0] <= tl && hw[1] <= tl {
			require.Zero(t, maxAbsDiff(t, a, b), "one tile is not tiled")
		}
	}
}

// TestTiledEncode encodes an image larger than one tile, with sizes that
// are not multiples of the stride.
func TestTiledEncode(t *testing.T) {
	testutil.NoLeak(t)
	s := torch.NewScope()
	defer s.Close()
	m := loadTiny(t)
	dev := testutil.Device(t)
	m.Tiling = Tiling{Enabled: true}
	g := geometry(m)
	m.Tiling = Tiling{}
	h, w := 2*g.ts+g.encStride/3+g.f, g.ts+g.encStride/2+g.f
	h, w = h/g.f*g.f, w/g.f*g.f
	img := smoothImage(int(h), int(w), dev)
	full, err := m.Encode(img)
	require.NoError(t, err)
	m.Tiling = Tiling{Enabled: true}
	tiled, err := m.Encode(img)
	require.NoError(t, err)
	require.Equal(t, full.Mean.Shape(), tiled.Mean.Shape())
	d := maxAbsDiff(t, tiled.Mean, full.Mean)
	t.Logf("tiled vs untiled encode (image %d×%d, |mean| ≤ %.2f): max |diff| of the mean %.3g, mean |diff| %.3g (mean |mean| %.3g)",
		h, w, absMax(t, full.Mean), d, meanAbsDiff(t, tiled.Mean, full.Mean), meanAbs(t, full.Mean))

	// Tile (0,0)'s top-left limit×limit moments are unblended.
	L := g.encLimit
	t00 := m.encodeMoments(img.Slice(2, 0, g.ts, 1).Slice(3, 0, g.ts, 1), nil)
	want := t00.Chunk(2, 1)[0].Slice(2, 0, L, 1).Slice(3, 0, L, 1)
	require.Zero(t, maxAbsDiff(t, tiled.Mean.Slice(2, 0, L, 1).Slice(3, 0, L, 1), want))

	// A custom tile size (half the config's) and overlap.
	m.Tiling = Tiling{Enabled: true, TileSize: int(g.ts / 2), Overlap: 0.5}
	small, err := m.Encode(img)
	require.NoError(t, err)
	require.Equal(t, full.Mean.Shape(), small.Mean.Shape())
}

func TestSlicing(t *testing.T) {
	testutil.NoLeak(t)
	s := torch.NewScope()
	defer s.Close()
	m := loadTiny(t)
	z := torch.Randn([]int64{3, int64(m.Config.LatentChannels), 6, 5}, torch.MustGenerator(torch.CPU, 5), torch.Float32, torch.CPU).ToDevice(testutil.Device(t))
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
