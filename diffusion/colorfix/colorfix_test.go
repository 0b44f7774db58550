package colorfix

import (
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/dp2osr/dp2o/internal/testutil"
	"github.com/dp2osr/dp2o/torch"
)

// Floats: |go − ref| ≤ 1e-6 (README); uint8 results exact.
const tol = 1e-6

func load(t *testing.T) (ref map[string]*torch.Tensor, w, h int) {
	t.Helper()
	ref = testutil.Tensors(t, testutil.Fixture(t, "sd2/colorfix/io.safetensors"))
	sh := ref["source_u8"].Shape() // (H, W, 3)
	return ref, int(sh[1]), int(sh[0])
}

func onDevice(t *testing.T, x *torch.Tensor) *torch.Tensor {
	return x.ToDevice(testutil.Device(t))
}

func assertClose(t *testing.T, name string, got, want *torch.Tensor) {
	t.Helper()
	g := got.ToDevice(torch.CPU)
	defer g.Close()
	testutil.AssertClose(t, name, g, want, tol, 0)
}

func rgbTensor(pix []uint8, w, h int) *torch.Tensor {
	return torch.FromSlice(pix, int64(h), int64(w), 3)
}

// TestAgainstReference drives the official adain and wavelet paths on the
// fixture's uint8 pair, checking the float intermediates and the final
// 8-bit images (truncating conversion) exactly.
func TestAgainstReference(t *testing.T) {
	testutil.NoLeak(t)
	s := torch.NewScope()
	defer s.Close()
	ref, w, h := load(t)
	checked := map[string]bool{"source_u8": true, "target_u8": true}
	src := torch.ToSlice[uint8](ref["source_u8"])
	tgt := torch.ToSlice[uint8](ref["target_u8"])

	st, err := ToTensor(src, w, h)
	require.NoError(t, err)
	tt, err := ToTensor(tgt, w, h)
	require.NoError(t, err)
	st, tt = onDevice(t, st), onDevice(t, tt)

	// AdaIN.
	sMean, sStd := MeanStd(st, MeanStdEps)
	tMean, tStd := MeanStd(tt, MeanStdEps)
	for name, got := range map[string]*torch.Tensor{
		"adain.source_mean": sMean, "adain.source_std": sStd,
		"adain.target_mean": tMean, "adain.target_std": tStd,
	} {
		assertClose(t, name, got, ref[name])
		checked[name] = true
	}
	y, err := Apply(MethodAdaIN, tt, st)
	require.NoError(t, err)
	assertClose(t, "adain.result_float", y, ref["adain.result_float"])
	checked["adain.result_float"] = true

	// Wavelet.
	high, _ := WaveletDecomposition(tt, WaveletLevels)
	assertClose(t, "wavelet.target_high", high, ref["wavelet.target_high"])
	_, low := WaveletDecomposition(st, WaveletLevels)
	assertClose(t, "wavelet.source_low", low, ref["wavelet.source_low"])
	y, err = Apply(MethodWavelet, tt, st)
	require.NoError(t, err)
	assertClose(t, "wavelet.result_float", y, ref["wavelet.result_float"])
	checked["wavelet.target_high"], checked["wavelet.source_low"], checked["wavelet.result_float"] = true, true, true

	// The 8-bit images.
	for _, m := range []Method{MethodAdaIN, MethodWavelet} {
		key := string(m) + ".result_u8"
		got, err := FixRGB(m, tgt, src, w, h)
		require.NoError(t, err)
		testutil.AssertEqual(t, key, rgbTensor(got, w, h), ref[key])
		checked[key] = true
	}

	for k := range ref {
		require.True(t, checked[k], "fixture tensor %s was not compared", k)
	}
}

// TestTruncation: ToPILImage truncates x·255, it does not round.
func TestTruncation(t *testing.T) {
	testutil.NoLeak(t)
	x := torch.FromSlice([]float32{0.999, 0.5, 1.5, -0.2, 0.0039, 1}, 1, 3, 1, 2)
	defer x.Close()
	pix, err := ToRGB(x)
	require.NoError(t, err)
	// HWC: pixel 0 = channels (0.999, 1.5→1, 0.0039), pixel 1 = (0.5, −0.2→0, 1).
	require.Equal(t, []uint8{254, 255, 0, 127, 0, 255}, pix)
}

func TestNoFixAndErrors(t *testing.T) {
	testutil.NoLeak(t)
	pix := []uint8{1, 2, 3, 4, 5, 6}
	out, err := FixRGB(MethodNone, pix, pix, 2, 1)
	require.NoError(t, err)
	require.Equal(t, pix, out)
	out[0] = 9
	require.Equal(t, uint8(1), pix[0], "a copy")

	_, err = FixRGB(MethodAdaIN, pix, pix[:3], 2, 1)
	require.ErrorContains(t, err, "source")
	_, err = ParseMethod("histogram")
	require.Error(t, err)
	m, err := ParseMethod("wavelet")
	require.NoError(t, err)
	require.Equal(t, MethodWavelet, m)

	a := torch.Zeros([]int64{1, 3, 8, 8}, torch.Float32, torch.CPU)
	defer a.Close()
	b := torch.Zeros([]int64{1, 3, 8, 6}, torch.Float32, torch.CPU)
	defer b.Close()
	_, err = Apply(MethodWavelet, a, b)
	require.ErrorContains(t, err, "one size")
	// AdaIN only needs statistics: sizes may differ.
	y, err := Apply(MethodAdaIN, a, b)
	require.NoError(t, err)
	y.Close()
}
