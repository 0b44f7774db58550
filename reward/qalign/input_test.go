package qalign

import (
	"context"
	"image"
	"image/color"
	"math"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/dp2osr/dp2o/imageio"
	"github.com/dp2osr/dp2o/internal/testutil"
	"github.com/dp2osr/dp2o/reward"
	"github.com/dp2osr/dp2o/reward/internal/iqatest"
	"github.com/dp2osr/dp2o/torch"
)

// pattern fills an image of w×h with a deterministic colour pattern
// through set.
func pattern(w, h int, set func(x, y int, r, g, b, a uint8)) {
	for y := 0; y < h; y++ {
		for x := 0; x < w; x++ {
			set(x, y, uint8(x*37+y*11), uint8(x*5+y*29), uint8(x*x+y), uint8(128+x-y))
		}
	}
}

// TestImageKinds: grayscale, RGBA and 16-bit images are converted to RGB
// as pyiqa's loader does (PIL convert('RGB'), through reward.ImageToTensor)
// and score like the RGB image that conversion gives; 1×1 images and
// images larger than the input on one side only go through the square pad.
func TestImageKinds(t *testing.T) {
	f := iqatest.Load(t, folder)
	s := scorer(t, f)
	ctx := context.Background()
	scoreRGB := func(t *testing.T, m *imageio.RGB8) []float64 {
		x, err := reward.RGB8ToTensor(m)
		require.NoError(t, err)
		defer x.Close()
		got, err := s.Score(ctx, x, nil)
		require.NoError(t, err)
		require.Len(t, got, 1)
		require.True(t, got[0] >= 1 && got[0] <= 5, "score %g outside [1,5]", got[0])
		return got
	}
	w, h := 40, 24
	gray := image.NewGray(image.Rect(0, 0, w, h))
	rgba := image.NewNRGBA(image.Rect(0, 0, w, h))
	rgb16 := image.NewRGBA64(image.Rect(0, 0, w, h))
	gray16 := image.NewGray16(image.Rect(0, 0, w, h))
	pattern(w, h, func(x, y int, r, g, b, a uint8) {
		gray.SetGray(x, y, color.Gray{Y: r})
		rgba.SetNRGBA(x, y, color.NRGBA{R: r, G: g, B: b, A: a})
		rgb16.SetRGBA64(x, y, color.RGBA64{R: uint16(r)<<8 | uint16(g), G: uint16(g) << 8, B: uint16(b)<<8 | 0xff, A: 0xffff})
		gray16.SetGray16(x, y, color.Gray16{Y: uint16(r) * 3})
	})
	for name, img := range map[string]image.Image{"gray": gray, "rgba": rgba, "rgb16": rgb16, "gray16": gray16} {
		t.Run(name, func(t *testing.T) {
			testutil.NoLeak(t)
			x, err := reward.ImageToTensor(img)
			require.NoError(t, err)
			defer x.Close()
			require.Equal(t, []int64{1, 3, int64(h), int64(w)}, x.Shape())
			got, err := s.Score(ctx, x, nil)
			require.NoError(t, err)
			require.Equal(t, scoreRGB(t, imageio.FromImage(img)), got)
		})
	}
	t.Run("gray replicated", func(t *testing.T) {
		testutil.NoLeak(t)
		m := imageio.FromImage(gray)
		for i := 0; i < len(m.Pix); i += 3 {
			require.Equal(t, gray.Pix[i/3], m.Pix[i])
			require.Equal(t, m.Pix[i], m.Pix[i+1])
			require.Equal(t, m.Pix[i], m.Pix[i+2])
		}
	})
	for _, size := range [][2]int{{1, 1}, {1, 600}, {600, 300}, {460, 20}} {
		t.Run("size", func(t *testing.T) {
			testutil.NoLeak(t)
			m := imageio.NewRGB8(size[0], size[1])
			pattern(size[0], size[1], func(x, y int, r, g, b, _ uint8) { m.Set(x, y, r, g, b) })
			sq := ExpandToSquare(m, s.Processor().Fill())
			require.Equal(t, max(size[0], size[1]), sq.W)
			require.Equal(t, sq.W, sq.H)
			x, err := reward.RGB8ToTensor(m)
			require.NoError(t, err)
			defer x.Close()
			pv, err := s.Processor().Preprocess(x)
			require.NoError(t, err)
			defer pv.Close()
			crop := int64(s.Processor().CropSize)
			require.Equal(t, []int64{1, 3, crop, crop}, pv.Shape())
			scoreRGB(t, m)
		})
	}
}

// TestBadInput: tensors that are not (N,3,H,W) images in [0,1], cancelled
// contexts and closed scorers give errors.
func TestBadInput(t *testing.T) {
	f := iqatest.Load(t, folder)
	s := scorer(t, f)
	ctx := context.Background()
	testutil.NoLeak(t)
	mk := func(shape []int64, v float64, dt torch.DType) *torch.Tensor {
		x := torch.Unscope(torch.Full(shape, v, dt, torch.CPU))
		t.Cleanup(x.Close)
		return x
	}
	for name, x := range map[string]*torch.Tensor{
		"grayscale (N,1,H,W)": mk([]int64{1, 1, 8, 8}, 0.5, torch.Float32),
		"RGBA (N,4,H,W)":      mk([]int64{1, 4, 8, 8}, 0.5, torch.Float32),
		"HWC":                 mk([]int64{8, 8, 3}, 0.5, torch.Float32),
		"uint8":               mk([]int64{1, 3, 8, 8}, 128, torch.Uint8),
		"above 1":             mk([]int64{1, 3, 8, 8}, 1.5, torch.Float32),
		"negative":            mk([]int64{1, 3, 8, 8}, -0.5, torch.Float32),
		"NaN":                 mk([]int64{1, 3, 8, 8}, math.NaN(), torch.Float32),
		"empty":               mk([]int64{0, 3, 8, 8}, 0, torch.Float32),
	} {
		_, err := s.Score(ctx, x, nil)
		require.Error(t, err, name)
		require.ErrorContains(t, err, "qalign", name)
	}
	_, err := s.Score(ctx, nil, nil)
	require.Error(t, err)
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	_, err = s.Score(cctx, mk([]int64{1, 3, 8, 8}, 0.5, torch.Float32), nil)
	require.ErrorIs(t, err, context.Canceled)

	// The model itself: pixels of another size, a prompt without its
	// placeholder.
	m := s.Model()
	side := m.Config().Vision.ImageSize
	err = torch.Try(func() {
		sc := torch.NewScope()
		defer sc.Close()
		m.Score(torch.Zeros([]int64{1, 3, side / 2, side / 2}, torch.Float32, torch.CPU), s.Prompt(), nil)
	})
	require.ErrorContains(t, err, "position table")
	bad := s.Prompt()
	bad.IDs = bad.IDs[:1]
	err = torch.Try(func() {
		sc := torch.NewScope()
		defer sc.Close()
		m.Score(torch.Zeros([]int64{1, 3, side, side}, torch.Float32, torch.CPU), bad, nil)
	})
	require.ErrorContains(t, err, "placeholder")

	closed := &Scorer{}
	_, err = closed.Score(ctx, mk([]int64{1, 3, 8, 8}, 0.5, torch.Float32), nil)
	require.ErrorContains(t, err, "closed")
	require.NoError(t, closed.Close())
}
