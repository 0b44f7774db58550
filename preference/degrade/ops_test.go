package degrade

import (
	"encoding/json"
	"fmt"
	"math"
	"os"
	"testing"

	"github.com/dp2osr/dp2o/internal/testutil"
	"github.com/dp2osr/dp2o/torch"
)

// Tolerances of fixtures/degrade/README.md §3.
const (
	tolKernelF64 = 1e-12 // kernels /f64
	tolBlur      = 1e-5  // blur, resize, stages of a chain
	tolNoise     = 1e-6  // noise given the draws
	tolRandn     = 2e-6  // randn draws on a CPU without AVX2/AVX512 kernels
	tolJPEG      = 1e-5  // JPEG output when every quantised coefficient agrees
)

func readJSON(t testing.TB, rel string, v any) {
	t.Helper()
	b, err := os.ReadFile(testutil.Fixture(t, rel))
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, v); err != nil {
		t.Fatalf("%s: %v", rel, err)
	}
}

func tensor(t testing.TB, m map[string]*torch.Tensor, key string) *torch.Tensor {
	t.Helper()
	v, ok := m[key]
	if !ok {
		t.Fatalf("fixture tensor %q missing", key)
	}
	return v
}

// within1ULP checks two float32 tensors element by element to one ulp.
func within1ULP(t testing.TB, name string, got, want *torch.Tensor) {
	t.Helper()
	if fmt.Sprint(got.Shape()) != fmt.Sprint(want.Shape()) {
		t.Fatalf("%s: shape %v, want %v", name, got.Shape(), want.Shape())
	}
	g, w := got.Float32s(), want.Float32s()
	worst := 0
	for i := range g {
		d := int(math.Float32bits(g[i])) - int(math.Float32bits(w[i]))
		if g[i] == w[i] {
			d = 0
		}
		if d < 0 {
			d = -d
		}
		worst = max(worst, d)
	}
	if worst > 1 {
		t.Fatalf("%s: differs by %d ulp (tolerance 1 ulp)", name, worst)
	}
	t.Logf("%s: max %d ulp", name, worst)
}

type kernelCase struct {
	Name          string  `json:"name"`
	Type          string  `json:"type"`
	KernelSize    int     `json:"kernel_size"`
	SigmaX        float64 `json:"sigma_x"`
	SigmaY        float64 `json:"sigma_y"`
	Theta         float64 `json:"theta"`
	Beta          float64 `json:"beta"`
	OmegaC        float64 `json:"omega_c"`
	PadTo         int     `json:"pad_to"`
	CircularPadTo int     `json:"circular_pad_to"`
	Shape         []int64 `json:"shape"`
}

func (c kernelCase) spec() KernelSpec {
	return KernelSpec{Type: c.Type, Size: c.KernelSize, SigmaX: c.SigmaX, SigmaY: c.SigmaY, Theta: c.Theta,
		Beta: c.Beta, OmegaC: c.OmegaC, PadTo: c.CircularPadTo}
}

func f64Tensor(k []float64, n int) *torch.Tensor { return torch.FromSlice(k, int64(n), int64(n)) }

func TestKernels(t *testing.T) {
	testutil.NoLeak(t)
	var cases struct{ Cases []kernelCase }
	readJSON(t, "degrade/kernels.json", &cases)
	ts := testutil.Tensors(t, testutil.Fixture(t, "degrade/kernels.safetensors"))
	if len(cases.Cases) == 0 {
		t.Fatal("no kernel cases")
	}
	for _, c := range cases.Cases {
		t.Run(c.Name, func(t *testing.T) {
			k, n, err := Kernel(c.spec())
			if err != nil {
				t.Fatal(err)
			}
			if want, ok := ts[c.Name+"/unpadded_f64"]; ok {
				got := f64Tensor(k, n)
				defer got.Close()
				testutil.AssertClose(t, c.Name+"/unpadded_f64", got, want, tolKernelF64, 0)
			}
			if c.PadTo > n {
				k = PadKernel(k, n, c.PadTo)
				n = c.PadTo
			}
			if fmt.Sprint([]int64{int64(n), int64(n)}) != fmt.Sprint(c.Shape) {
				t.Fatalf("kernel size %d, want shape %v", n, c.Shape)
			}
			got := f64Tensor(k, n)
			defer got.Close()
			testutil.AssertClose(t, c.Name+"/f64", got, tensor(t, ts, c.Name+"/f64"), tolKernelF64, 0)
			g32 := KernelTensor(k, n)
			defer g32.Close()
			within1ULP(t, c.Name+"/f32", g32, tensor(t, ts, c.Name+"/f32"))
		})
	}
}

func TestBlur(t *testing.T) {
	testutil.NoLeak(t)
	var cases struct {
		Cases []struct {
			Name, Image, Kernel string
			Shape               []int64
		}
	}
	readJSON(t, "degrade/blur.json", &cases)
	in := testutil.Tensors(t, testutil.Fixture(t, "degrade/inputs.safetensors"))
	ks := testutil.Tensors(t, testutil.Fixture(t, "degrade/kernels.safetensors"))
	want := testutil.Tensors(t, testutil.Fixture(t, "degrade/blur.safetensors"))
	dev := testutil.Device(t)
	for _, c := range cases.Cases {
		t.Run(c.Name, func(t *testing.T) {
			s := torch.NewScope()
			defer s.Close()
			got := Filter2D(tensor(t, in, c.Image).ToDevice(dev), tensor(t, ks, c.Kernel+"/f32"))
			testutil.AssertClose(t, c.Name, got, tensor(t, want, c.Name), tolBlur, 0)
		})
	}
}

func TestResize(t *testing.T) {
	testutil.NoLeak(t)
	var cases struct {
		Cases []struct {
			Name        string   `json:"name"`
			Image       string   `json:"image"`
			Call        string   `json:"call"`
			ScaleFactor float64  `json:"scale_factor"`
			Size        [2]int64 `json:"size"`
			Mode        string   `json:"mode"`
			OutShape    []int64  `json:"out_shape"`
		}
	}
	readJSON(t, "degrade/resize.json", &cases)
	in := testutil.Tensors(t, testutil.Fixture(t, "degrade/inputs.safetensors"))
	want := testutil.Tensors(t, testutil.Fixture(t, "degrade/resize.safetensors"))
	dev := testutil.Device(t)
	for _, c := range cases.Cases {
		t.Run(c.Name, func(t *testing.T) {
			s := torch.NewScope()
			defer s.Close()
			x := tensor(t, in, c.Image).ToDevice(dev)
			var got *torch.Tensor
			switch c.Call {
			case "scale_factor":
				got = ResizeScale(x, c.ScaleFactor, c.Mode)
			case "size":
				got = ResizeSize(x, c.Size[0], c.Size[1], c.Mode)
			default:
				t.Fatalf("unknown call %q", c.Call)
			}
			if fmt.Sprint(got.Shape()) != fmt.Sprint(c.OutShape) {
				t.Fatalf("shape %v, want %v", got.Shape(), c.OutShape)
			}
			testutil.AssertClose(t, c.Name, got, tensor(t, want, c.Name), tolBlur, 0)
		})
	}
}

// collect returns a Tap that clones every tensor it sees into m (CPU) and
// the cleanup that frees them.
func collect(t testing.TB) (Tap, map[string]*torch.Tensor) {
	m := map[string]*torch.Tensor{}
	t.Cleanup(func() {
		for _, v := range m {
			v.Close()
		}
	})
	return func(name string, x *torch.Tensor) {
		if old, ok := m[name]; ok {
			old.Close()
		}
		m[name] = torch.Unscope(x.ToDevice(torch.CPU).Clone())
	}, m
}

// assertDraw compares a generator draw: bit-exact, except randn, which
// libtorch computes with other kernels on CPUs without AVX2 (README §3).
func assertDraw(t testing.TB, name string, got, want *torch.Tensor, isRandn bool) {
	t.Helper()
	if fmt.Sprint(got.Shape()) == fmt.Sprint(want.Shape()) && got.Equal(want) {
		return
	}
	if !isRandn {
		testutil.AssertEqual(t, name, got, want)
		return
	}
	t.Logf("%s: randn not bit-identical (ATen CPU capability other than AVX2/AVX512?), checking at %g", name, tolRandn)
	testutil.AssertClose(t, name, got, want, tolRandn, 0)
}
