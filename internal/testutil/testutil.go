// Package testutil holds what the model tests share: locating fixtures
// (testdata/ or $DP2O_FIXTURES), reading tensors from safetensors fixtures,
// comparing tensors with a tolerance that names the first diverging one, and
// the device switch of the GPU runs.
package testutil

import (
	"fmt"
	"math"
	"os"
	"testing"

	"github.com/dp2osr/dp2o/torch"
	"github.com/dp2osr/dp2o/torch/safetensors"
)

// Fixture returns the path of a fixture file or folder. rel is relative to
// the fixture root (e.g. "sd2/unet/io_main.safetensors"). With
// $DP2O_FIXTURES set it is looked up there; otherwise under the package's
// testdata/ with the same layout, then under the module root's testdata/
// (fixtures that several packages share, kept once).
func Fixture(tb testing.TB, rel string) string {
	tb.Helper()
	p := fixturePath(rel)
	if _, err := os.Stat(p); err != nil {
		tb.Fatalf("fixture %s: %v", rel, err)
	}
	return p
}

// Device is the device tests run on: $DP2O_DEVICE ("cpu" when unset).
func Device(tb testing.TB) torch.Device {
	tb.Helper()
	s := os.Getenv("DP2O_DEVICE")
	if s == "" {
		return torch.CPU
	}
	d, err := torch.ParseDevice(s)
	if err != nil {
		tb.Fatal(err)
	}
	if d.IsCUDA() && !torch.CUDAAvailable() {
		tb.Fatalf("DP2O_DEVICE=%s but libtorch sees no CUDA device", s)
	}
	if d.IsCUDA() {
		// Parity with float32 references: no TF32 in convolutions or matmuls.
		torch.SetAllowTF32(false, false)
	}
	return d
}

// Tensors reads every tensor of a safetensors file into CPU tensors that
// the test's cleanup closes.
func Tensors(tb testing.TB, path string) map[string]*torch.Tensor {
	tb.Helper()
	f, err := safetensors.Open(path)
	if err != nil {
		tb.Fatal(err)
	}
	defer f.Close()
	out := map[string]*torch.Tensor{}
	for _, n := range f.Names() {
		info, _ := f.Info(n)
		dt, err := torch.DTypeFromSafetensors(string(info.DType))
		if err != nil {
			tb.Fatalf("%s: %s: %v", path, n, err)
		}
		b, err := f.Data(n)
		if err != nil {
			tb.Fatal(err)
		}
		t, err := torch.FromBytes(b, dt, info.Shape)
		if err != nil {
			tb.Fatal(err)
		}
		out[n] = torch.Unscope(t)
	}
	tb.Cleanup(func() {
		for _, t := range out {
			t.Close()
		}
	})
	return out
}

// Diff compares got with want elementwise (both moved to float64 on the CPU):
// it returns the largest |got−want| and the largest excess over
// atol + rtol·|want| (≤ 0 when within tolerance), or an error for a shape
// mismatch.
func Diff(got, want *torch.Tensor, atol, rtol float64) (maxAbs, worst float64, err error) {
	gs, ws := got.Shape(), want.Shape()
	if fmt.Sprint(gs) != fmt.Sprint(ws) {
		return 0, 0, fmt.Errorf("shape %v, want %v", gs, ws)
	}
	g, w := got.Float64s(), want.Float64s()
	worst = math.Inf(-1)
	for i := range g {
		d := math.Abs(g[i] - w[i])
		if math.IsNaN(g[i]) != math.IsNaN(w[i]) {
			return math.NaN(), math.Inf(1), nil
		}
		if d > maxAbs {
			maxAbs = d
		}
		if e := d - (atol + rtol*math.Abs(w[i])); e > worst {
			worst = e
		}
	}
	if len(g) == 0 {
		worst = 0
	}
	return maxAbs, worst, nil
}

// AssertClose fails the test (fatally: later checks would only repeat the
// divergence) when got differs from want by more than atol + rtol·|want|.
func AssertClose(tb testing.TB, name string, got, want *torch.Tensor, atol, rtol float64) {
	tb.Helper()
	maxAbs, worst, err := Diff(got, want, atol, rtol)
	if err != nil {
		tb.Fatalf("%s: %v", name, err)
	}
	if worst > 0 {
		tb.Fatalf("%s: max |diff| %.3g exceeds tolerance %.1g + %.1g·|ref| (first diverging tensor)", name, maxAbs, atol, rtol)
	}
	tb.Logf("%s: max |diff| %.3g", name, maxAbs)
}

// AssertCloseToMax is AssertClose with an absolute tolerance of rel times
// want's largest magnitude: for gradients, whose rounding scales with the
// tensor's largest entries rather than with each entry.
func AssertCloseToMax(tb testing.TB, name string, got, want *torch.Tensor, rel float64) {
	tb.Helper()
	scale := 0.0
	for _, v := range want.Float64s() {
		scale = max(scale, math.Abs(v))
	}
	AssertClose(tb, name, got, want, rel*scale, 0)
}

// CloseMap closes every tensor of m.
func CloseMap(m map[string]*torch.Tensor) {
	for _, t := range m {
		t.Close()
	}
}

// AssertEqual fails unless got and want have the same shape, dtype and bytes.
func AssertEqual(tb testing.TB, name string, got, want *torch.Tensor) {
	tb.Helper()
	if fmt.Sprint(got.Shape()) != fmt.Sprint(want.Shape()) {
		tb.Fatalf("%s: shape %v, want %v", name, got.Shape(), want.Shape())
	}
	if got.DType() != want.DType() {
		tb.Fatalf("%s: dtype %v, want %v", name, got.DType(), want.DType())
	}
	gb, wb := got.Bytes(), want.Bytes()
	for i := range gb {
		if gb[i] != wb[i] {
			maxAbs, _, _ := Diff(got, want, 0, 0)
			tb.Fatalf("%s: not bit-identical (byte %d differs; max |diff| %.3g)", name, i, maxAbs)
		}
	}
}

// NoLeak records the live-tensor count and, at the end of the test, fails
// if it grew.
func NoLeak(tb testing.TB) {
	tb.Helper()
	before := torch.LiveTensors()
	tb.Cleanup(func() {
		if after := torch.LiveTensors(); after > before {
			tb.Errorf("leaked %d tensor handles (%d live before, %d after)", after-before, before, after)
		}
	})
}

// RandomInit fills w in place with normal draws from gen scaled by its
// fan-in (standard deviation 1/√fan-in for a matrix or kernel, 0.5 for a
// vector): random weights under which a test's activations stay of order
// one, for tests of structure (chunked against whole passes, kept against
// freed outputs) rather than of a checkpoint's values.
func RandomInit(w *torch.Tensor, gen *torch.Generator) {
	std := 0.5
	if w.Dim() >= 2 {
		std = 1 / math.Sqrt(float64(w.Numel()/w.Size(0)))
	}
	w.Normal_(0, std, gen)
}
