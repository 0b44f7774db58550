package degrade

import (
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"testing"

	"github.com/dp2osr/dp2o/internal/testutil"
	"github.com/dp2osr/dp2o/torch"
)

type chainCase struct {
	Name    string  `json:"name"`
	Config  string  `json:"config"`
	Image   string  `json:"image"`
	Seed    uint64  `json:"seed"`
	GTShape []int64 `json:"gt_shape"`
	LQShape []int64 `json:"lq_shape"`
}

// chainFixture is one chain: its parameter record (as Degrade reads it),
// the torch seed, and its tensors.
type chainFixture struct {
	rec       Record
	torchSeed uint64
	ts        map[string]*torch.Tensor
}

func loadChain(t testing.TB, name string) chainFixture {
	t.Helper()
	b, err := os.ReadFile(testutil.Fixture(t, "degrade/chains/"+name+".json"))
	if err != nil {
		t.Fatal(err)
	}
	var f chainFixture
	if err := json.Unmarshal(b, &f.rec); err != nil {
		t.Fatalf("%s: record: %v", name, err)
	}
	var seeds struct {
		TorchSeed *uint64 `json:"torch_seed"`
	}
	if err := json.Unmarshal(b, &seeds); err != nil || seeds.TorchSeed == nil {
		t.Fatalf("%s: no torch_seed (%v)", name, err)
	}
	f.torchSeed = *seeds.TorchSeed
	f.ts = testutil.Tensors(t, testutil.Fixture(t, "degrade/chains/"+name+".safetensors"))
	return f
}

func chainCases(t testing.TB) []chainCase {
	var cases struct{ Cases []chainCase }
	readJSON(t, "degrade/chains/cases.json", &cases)
	if len(cases.Cases) == 0 {
		t.Fatal("no chain cases")
	}
	return cases.Cases
}

// TestChainEndToEnd runs every fixture chain from its record and torch seed
// and checks the kernels, every generator draw, every stage, the completed
// record and the LR image, which the README expects byte-identical from a
// float32 libtorch CPU port running the same op sequence. Where that does
// not hold (another BLAS or CPU), the README's acceptance rule applies: a
// differing chain has at most 2% of its elements off by one level, and at
// most one chain in 20 differs.
func TestChainEndToEnd(t *testing.T) {
	testutil.NoLeak(t)
	cases := chainCases(t)
	var check struct {
		Chains map[string]struct {
			Ambiguous int `json:"lq_ambiguous_pixels"`
		} `json:"chains"`
	}
	readJSON(t, "degrade/check.json", &check)
	differing := 0
	for _, c := range cases {
		t.Run(c.Name, func(t *testing.T) {
			f := loadChain(t, c.Name)
			s := torch.NewScope()
			defer s.Close()
			gen := torch.MustGenerator(torch.CPU, f.torchSeed)
			tap, got := collect(t)
			gt := tensor(t, f.ts, "gt")
			if fmt.Sprint(gt.Shape()) != fmt.Sprint(c.GTShape) {
				t.Fatalf("gt shape %v, want %v", gt.Shape(), c.GTShape)
			}
			lq, out, err := Degrade(gt.ToDevice(testutil.Device(t)), f.rec, gen, tap)
			if err != nil {
				t.Fatal(err)
			}
			if fmt.Sprint(lq.Shape()) != fmt.Sprint(c.LQShape) {
				t.Fatalf("lq shape %v, want %v", lq.Shape(), c.LQShape)
			}
			within1ULP(t, "kernel1", got["kernel1"], tensor(t, f.ts, "kernel1"))
			within1ULP(t, "sinc_kernel", got["sinc_kernel"], tensor(t, f.ts, "sinc_kernel"))
			for k, want := range f.ts {
				if strings.HasPrefix(k, "draw_") {
					g, ok := got[k]
					if !ok {
						t.Fatalf("draw %q not made", k)
					}
					if strings.HasPrefix(k, "draw_poisson_") {
						assertPoissonDraw(t, k, g, want, got["s1_resize"], tensor(t, f.ts, "s1_resize"))
						continue
					}
					assertDraw(t, k, g, want, strings.HasPrefix(k, "draw_randn"))
				}
			}
			for k := range got {
				if _, ok := f.ts[k]; strings.HasPrefix(k, "draw_") && !ok {
					t.Fatalf("unexpected draw %q", k)
				}
			}
			// The completed record equals what the reference drew and computed.
			wantRec := f.rec
			if out.Stage1.Noise.ULevel != wantRec.Stage1.Noise.ULevel || out.Stage1.Noise.UGray != wantRec.Stage1.Noise.UGray ||
				out.Stage1.Noise.Level != wantRec.Stage1.Noise.Level || out.Stage1.Noise.IsGray != wantRec.Stage1.Noise.IsGray {
				t.Fatalf("noise draws %+v, want %+v", out.Stage1.Noise, wantRec.Stage1.Noise)
			}
			if out.Stage1.JPEGQuality != wantRec.Stage1.JPEGQuality || out.Stage1.JPEGFactor != wantRec.Stage1.JPEGFactor ||
				out.Final.JPEGQuality != wantRec.Final.JPEGQuality || out.Final.JPEGFactor != wantRec.Final.JPEGFactor {
				t.Fatalf("jpeg draws q1 %v f1 %v q2 %v f2 %v, want %v %v %v %v", out.Stage1.JPEGQuality, out.Stage1.JPEGFactor,
					out.Final.JPEGQuality, out.Final.JPEGFactor, wantRec.Stage1.JPEGQuality, wantRec.Stage1.JPEGFactor,
					wantRec.Final.JPEGQuality, wantRec.Final.JPEGFactor)
			}
			if out.Stage1.Resize.OutSize != wantRec.Stage1.Resize.OutSize || out.Final.Size != wantRec.Final.Size {
				t.Fatalf("sizes %v %v, want %v %v", out.Stage1.Resize.OutSize, out.Final.Size, wantRec.Stage1.Resize.OutSize, wantRec.Final.Size)
			}
			for _, k := range []string{"s1_blur", "s1_resize", "s1_noisy", "s1_jpeg", "f_resize", "f_sinc", "f_jpeg"} {
				_, _, err := testutil.Diff(got[k], tensor(t, f.ts, k), 0, 0)
				if err != nil {
					t.Fatalf("%s: %v", k, err)
				}
				maxAbs, _, _ := testutil.Diff(got[k], tensor(t, f.ts, k), 0, 0)
				t.Logf("%s: max |diff| %.3g (end to end)", k, maxAbs)
			}
			u8 := ToUint8(lq).ToDevice(torch.CPU)
			wantU8 := tensor(t, f.ts, "lq_u8")
			if u8.Equal(wantU8) {
				testutil.AssertEqual(t, "lq", lq.ToDevice(torch.CPU), tensor(t, f.ts, "lq"))
				return
			}
			differing++
			g, w := u8.Bytes(), wantU8.Bytes()
			n := 0
			for i := range g {
				d := int(g[i]) - int(w[i])
				if d != 0 {
					n++
				}
				if d > 1 || d < -1 {
					t.Fatalf("lq_u8: element %d differs by %d levels", i, d)
				}
			}
			if float64(n) > 0.02*float64(len(g)) {
				t.Fatalf("lq_u8: %d of %d elements differ (more than 2%%)", n, len(g))
			}
			t.Logf("lq_u8: %d elements differ by one level (%d ambiguous pixels in the fixture's check)", n, check.Chains[c.Name].Ambiguous)
		})
	}
	allowed := (len(cases) + 19) / 20
	if dev := testutil.Device(t); dev != torch.CPU {
		// README §3: CUDA kernels sum in other orders, so JPEG flips are
		// expected in more chains; each chain still obeys the per-chain rule.
		t.Logf("%d of %d chains differ on %v (the one-in-20 rule is for CPU ports)", differing, len(cases), dev)
		return
	}
	if differing > allowed {
		t.Fatalf("%d of %d chains differ from the fixture's lq_u8 (at most %d allowed)", differing, len(cases), allowed)
	}
}

// TestChainStages recomputes every stage of every fixture chain from the
// fixture's own input to that stage (README §3 step 3), so that a
// divergence names the stage it starts in.
func TestChainStages(t *testing.T) {
	testutil.NoLeak(t)
	for _, c := range chainCases(t) {
		t.Run(c.Name, func(t *testing.T) {
			f := loadChain(t, c.Name)
			s := torch.NewScope()
			defer s.Close()
			dev := testutil.Device(t)
			fx := func(k string) *torch.Tensor { return tensor(t, f.ts, k).ToDevice(dev) }
			check := func(name string, got *torch.Tensor) {
				testutil.AssertClose(t, name, got, tensor(t, f.ts, name), tolBlur, 0)
			}
			check("s1_blur", Filter2D(fx("gt"), fx("kernel1")))
			check("s1_resize", ResizeScale(fx("s1_blur"), f.rec.Stage1.Resize.Scale, f.rec.Stage1.Resize.Mode))
			gen := torch.MustGenerator(torch.CPU, f.torchSeed)
			nz := f.rec.Stage1.Noise
			d := DrawNoiseLevel(1, nz.Range[0], nz.Range[1], nz.GrayProb, gen, dev)
			defer d.Close()
			if nz.Kind == NoiseGaussian {
				check("s1_noisy", AddGaussianNoise(fx("s1_resize"), d.Level, d.IsGray, gen, nil))
			} else {
				check("s1_noisy", AddPoissonNoise(fx("s1_resize"), d.Level, d.IsGray, gen, nil))
			}
			check("s1_jpeg", DiffJPEG(fx("s1_noisy").Clamp(0, 1), fx("draw_q1"), nil))
			lh, lw := f.rec.Final.Size[0], f.rec.Final.Size[1]
			var last string
			if f.rec.Final.Order == OrderResizeSincJPEG {
				check("f_resize", ResizeSize(fx("s1_jpeg"), lh, lw, f.rec.Final.Mode))
				check("f_sinc", Filter2D(fx("f_resize"), fx("sinc_kernel")))
				check("f_jpeg", DiffJPEG(fx("f_sinc").Clamp(0, 1), fx("draw_q2"), nil))
				last = "f_jpeg"
			} else {
				check("f_jpeg", DiffJPEG(fx("s1_jpeg").Clamp(0, 1), fx("draw_q2"), nil))
				check("f_resize", ResizeSize(fx("f_jpeg"), lh, lw, f.rec.Final.Mode))
				check("f_sinc", Filter2D(fx("f_resize"), fx("sinc_kernel")))
				last = "f_sinc"
			}
			testutil.AssertEqual(t, "lq", quantise255(fx(last)).ToDevice(torch.CPU), tensor(t, f.ts, "lq"))
		})
	}
}

// assertPoissonDraw compares a chain's Poisson counts. Their rates are the
// noise stage's input rounded to 1/255 (grey first for draw_poisson_gray),
// and that input, the stage-1 resize, is float32 arithmetic: another
// libtorch computes it to other last bits (2.6's resize differs from 1.13's
// in most elements by an ulp), and where x·255 sits at a .5 the rounded rate
// moves by a level and so may the count (README §3: the same happens in 19
// of the float64 recomputations). The counts must therefore be bit-identical
// wherever this port's rate equals the rate the fixture's own stage input
// gives, and may differ only where the rates differ.
func assertPoissonDraw(t testing.TB, name string, got, want, input, wantInput *torch.Tensor) {
	t.Helper()
	if fmt.Sprint(got.Shape()) == fmt.Sprint(want.Shape()) && got.Equal(want) {
		return
	}
	rates := func(x *torch.Tensor) []float32 {
		return torch.Scoped(func() *torch.Tensor {
			if name == "draw_poisson_gray" {
				x = rgbToGray(x)
			}
			return quantise255(x).Contiguous()
		}).Float32s()
	}
	if fmt.Sprint(got.Shape()) != fmt.Sprint(want.Shape()) {
		t.Fatalf("%s: shape %v, want %v", name, got.Shape(), want.Shape())
	}
	g, w := got.Float32s(), want.Float32s()
	rg, rw := rates(input), rates(wantInput)
	if len(rg) != len(g) || len(rw) != len(g) {
		t.Fatalf("%s: %d counts for %d and %d rates", name, len(g), len(rg), len(rw))
	}
	moved, differ := 0, 0
	for i := range g {
		if rg[i] != rw[i] {
			moved++
		}
		if g[i] != w[i] {
			differ++
			if rg[i] == rw[i] {
				t.Fatalf("%s: count %d is %v, want %v, at the same rate %v", name, i, g[i], w[i], rg[i])
			}
		}
	}
	t.Logf("%s: %d counts differ, all where the rounded rate moved by a level (%d of %d rates moved)", name, differ, moved, len(g))
}
