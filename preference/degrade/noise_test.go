package degrade

import (
	"strings"
	"testing"

	"github.com/dp2osr/dp2o/internal/testutil"
	"github.com/dp2osr/dp2o/torch"
)

type noiseCase struct {
	Name     string     `json:"name"`
	Kind     string     `json:"kind"`
	Image    string     `json:"image"`
	Level    float64    `json:"level"`
	Gray     float64    `json:"gray"`
	Seed     uint64     `json:"seed"`
	Call     string     `json:"call"`
	Range    [2]float64 `json:"range"`
	GrayProb float64    `json:"gray_prob"`
	DrawKeys []string   `json:"draw_keys"`
	Shape    []int64    `json:"shape"`
}

func TestNoise(t *testing.T) {
	testutil.NoLeak(t)
	var cases struct{ Cases []noiseCase }
	readJSON(t, "degrade/noise.json", &cases)
	in := testutil.Tensors(t, testutil.Fixture(t, "degrade/inputs.safetensors"))
	want := testutil.Tensors(t, testutil.Fixture(t, "degrade/noise.safetensors"))
	for _, c := range cases.Cases {
		t.Run(c.Name, func(t *testing.T) {
			s := torch.NewScope()
			defer s.Close()
			gen := torch.MustGenerator(torch.CPU, c.Seed)
			tap, got := collect(t)
			x := tensor(t, in, c.Image)
			var out *torch.Tensor
			random := strings.HasPrefix(c.Call, "random_")
			var level, gray *torch.Tensor
			if random {
				d := DrawNoiseLevel(x.Size(0), c.Range[0], c.Range[1], c.GrayProb, gen, torch.CPU)
				defer d.Close()
				for name, v := range map[string]*torch.Tensor{"u_level": d.ULevel, "u_gray": d.UGray, "level": d.Level, "is_gray": d.IsGray} {
					assertDraw(t, name, v, tensor(t, want, c.Name+"/"+name), false)
				}
				level, gray = d.Level, d.IsGray
			} else {
				level = torch.FromSlice([]float32{float32(c.Level)}, 1)
				gray = torch.FromSlice([]float32{float32(c.Gray)}, 1)
			}
			switch c.Kind {
			case NoiseGaussian:
				out = AddGaussianNoise(x, level, gray, gen, tap)
			case NoisePoisson:
				out = AddPoissonNoise(x, level, gray, gen, tap)
			default:
				t.Fatalf("unknown kind %q", c.Kind)
			}
			for _, k := range c.DrawKeys {
				g, ok := got[k]
				if !ok {
					t.Fatalf("draw %q was not made", k)
				}
				assertDraw(t, k, g, tensor(t, want, c.Name+"/"+k), strings.HasPrefix(k, "randn"))
			}
			for k := range got {
				found := false
				for _, d := range c.DrawKeys {
					found = found || d == k
				}
				if !found {
					t.Fatalf("unexpected draw %q (the fixture draws %v)", k, c.DrawKeys)
				}
			}
			testutil.AssertClose(t, c.Name+"/out", out, tensor(t, want, c.Name+"/out"), tolNoise, 0)
		})
	}
}
