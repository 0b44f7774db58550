package imageio

import (
	"testing"

	"github.com/stretchr/testify/require"
)

// TestPlanSizes checks the official resize rules against values computed
// with Python (the script's own expressions, float division and int()).
func TestPlanSizes(t *testing.T) {
	type sz = Size
	cases := []struct {
		w0, h0, ps, up int
		enlarged       bool
		steps          []Size
		out            Size
	}{
		{512, 512, 512, 1, false, []sz{{512, 512}, {512, 512}}, sz{512, 512}},
		{128, 128, 512, 1, true, []sz{{512, 512}, {512, 512}, {512, 512}}, sz{128, 128}},
		{128, 128, 512, 4, false, []sz{{512, 512}, {512, 512}}, sz{512, 512}},
		{100, 75, 512, 4, true, []sz{{170, 128}, {680, 512}, {680, 512}}, sz{400, 300}},
		{37, 23, 512, 1, true, []sz{{823, 512}, {823, 512}, {816, 512}}, sz{37, 23}},
		{641, 480, 512, 1, true, []sz{{683, 512}, {683, 512}, {680, 512}}, sz{641, 480}},
		{1000, 700, 512, 1, false, []sz{{1000, 700}, {1000, 696}}, sz{1000, 700}},
		{513, 9000, 512, 1, false, []sz{{513, 9000}, {512, 9000}}, sz{513, 9000}},
		{13, 91, 512, 1, true, []sz{{512, 3584}, {512, 3584}, {512, 3584}}, sz{13, 91}},
		{91, 13, 768, 2, true, []sz{{2688, 384}, {5376, 768}, {5376, 768}}, sz{182, 26}},
		{255, 256, 512, 2, true, []sz{{256, 257}, {512, 514}, {512, 512}}, sz{510, 512}},
		{10, 10, 100, 3, true, []sz{{33, 33}, {99, 99}, {96, 96}}, sz{30, 30}},
		// Python's float arithmetic: 512/49*49 = 511.99999999999994 → 511.
		{49, 60, 512, 1, true, []sz{{511, 626}, {511, 626}, {504, 624}}, sz{49, 60}},
		{60, 49, 512, 1, true, []sz{{626, 511}, {626, 511}, {624, 504}}, sz{60, 49}},
		{47, 47, 768, 1, true, []sz{{767, 767}, {767, 767}, {760, 760}}, sz{47, 47}},
		{35, 100, 1364, 4, true, []sz{{340, 974}, {1360, 3896}, {1360, 3896}}, sz{140, 400}},
	}
	for _, c := range cases {
		p, err := PlanSizes(c.w0, c.h0, c.ps, c.up)
		require.NoError(t, err, "%+v", c)
		require.Equal(t, c.enlarged, p.Enlarged, "%+v", c)
		require.Equal(t, c.steps, p.Steps, "%+v", c)
		last := c.steps[len(c.steps)-1]
		require.Equal(t, [2]int{last.W, last.H}, [2]int{p.ProcW, p.ProcH}, "%+v", c)
		require.Equal(t, [2]int{c.out.W, c.out.H}, [2]int{p.OutW, p.OutH}, "%+v", c)
		require.Equal(t, [4]int{c.w0, c.h0, c.ps, c.up}, [4]int{p.OrigW, p.OrigH, p.ProcessSize, p.Upscale})
	}
}

func TestPlanSizesErrors(t *testing.T) {
	cases := []struct {
		w0, h0, ps, up int
		msg            string
	}{
		{0, 10, 512, 1, "must be positive"},
		{10, -1, 512, 1, "must be positive"},
		{10, 10, 0, 1, "process_size 0"},
		{10, 10, 512, 0, "upscale 0"},
		{10, 10, 512, -2, "upscale -2"},
		{5, 5, 4, 1, "zero side"},                 // 5x5 is not enlarged; 5//8*8 = 0
		{3, 3, 1, 2, "zero side"},                 // 1//2 = 0: no enlargement; 6//8*8 = 0
		{3, 1000, 512, 4, "exceeds the limit"},    // 512x170664
		{5000, 5000, 512, 1, "exceeds the limit"}, // 25 M pixels
		{1 << 40, 10, 512, 1, "too large"},
		{1 << 29, 1 << 29, 512, 1 << 29, "too large"},
		{1, 1 << 29, 1 << 30, 1, "too large"},
	}
	for _, c := range cases {
		_, err := PlanSizes(c.w0, c.h0, c.ps, c.up)
		require.Error(t, err, "%+v", c)
		require.ErrorContains(t, err, c.msg, "%+v", c)
		require.ErrorContains(t, err, "imageio: plan:")
	}
	// The limit is configurable; non-positive means none.
	_, err := PlanSizesLimit(5000, 5000, 512, 1, 0)
	require.NoError(t, err)
	_, err = PlanSizesLimit(1000, 700, 512, 1, 1000*696-1)
	require.ErrorContains(t, err, "exceeds the limit of 695999 pixels")
	_, err = PlanSizesLimit(1000, 700, 512, 1, 1000*696)
	require.NoError(t, err)
}

// TestPrepare checks that Prepare is the chain of bicubic PIL resizes of
// the plan, copies included, and leaves its input alone.
func TestPrepare(t *testing.T) {
	in := lcgImage(3, 37, 23)
	orig := in.Clone()
	out, p, err := Prepare(in, 512, 1)
	require.NoError(t, err)
	require.Equal(t, orig.Pix, in.Pix)
	require.Equal(t, [2]int{816, 512}, [2]int{out.W, out.H})
	want := Resize(Resize(Resize(in, 823, 512, Bicubic), 823, 512, Bicubic), 816, 512, Bicubic)
	require.Equal(t, want.Pix, out.Pix)
	back := p.Finish(out)
	require.Equal(t, [2]int{37, 23}, [2]int{back.W, back.H})
	require.Equal(t, Resize(out, 37, 23, Bicubic).Pix, back.Pix)

	// Already at the processing size: a copy, not the same buffer.
	sq := lcgImage(4, 64, 64)
	out, p, err = Prepare(sq, 64, 1)
	require.NoError(t, err)
	require.False(t, p.Enlarged)
	require.Equal(t, sq.Pix, out.Pix)
	out.Pix[0]++
	require.NotEqual(t, sq.Pix[0], out.Pix[0])
	require.Equal(t, sq.Pix, p.Finish(sq).Pix)

	_, _, err = Prepare(lcgImage(5, 3, 3), 1, 2)
	require.ErrorContains(t, err, "zero side")
	_, _, err = PrepareLimit(lcgImage(5, 40, 40), 512, 1, 100)
	require.ErrorContains(t, err, "exceeds the limit")
	_, _, err = Prepare(nil, 512, 1)
	require.Error(t, err)
}
