package torch_test

import (
	"encoding/json"
	"os"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/dp2osr/dp2o/internal/testutil"
	"github.com/dp2osr/dp2o/torch"
)

// rngCases is rng.json of the torch fixture.
type rngCases struct {
	GeneratorCases []struct {
		Seed  uint64   `json:"seed"`
		Order []string `json:"order"`
		Names []string `json:"names"`
	} `json:"generator_cases"`
	GlobalCase struct {
		ManualSeed uint64 `json:"manual_seed"`
		Draw       string `json:"draw"`
		Name       string `json:"name"`
	} `json:"global_case"`
}

var (
	drawRE   = regexp.MustCompile(`^(randn|rand) \[([0-9, ]*)\] (\w+)`)
	normalRE = regexp.MustCompile(`^normal_\(mean=([-0-9.e]+),\s*std=([-0-9.e]+)\) on empty\(([0-9, ]*)\) (\w+)$`)
)

func parseShape(t *testing.T, s string) []int64 {
	t.Helper()
	shape := []int64{}
	for _, f := range strings.Split(s, ",") {
		f = strings.TrimSpace(f)
		if f == "" {
			continue
		}
		n, err := strconv.ParseInt(f, 10, 64)
		require.NoError(t, err, "shape %q", s)
		shape = append(shape, n)
	}
	return shape
}

// draw performs one draw described by a line of rng.json's "order" list.
func draw(t *testing.T, desc string, gen *torch.Generator, dev torch.Device) *torch.Tensor {
	t.Helper()
	if m := drawRE.FindStringSubmatch(desc); m != nil {
		dt, err := torch.ParseDType(m[3])
		require.NoError(t, err)
		shape := parseShape(t, m[2])
		if m[1] == "randn" {
			return torch.Randn(shape, gen, dt, dev)
		}
		return torch.Rand(shape, gen, dt, dev)
	}
	if m := normalRE.FindStringSubmatch(desc); m != nil {
		mean, err := strconv.ParseFloat(m[1], 64)
		require.NoError(t, err)
		std, err := strconv.ParseFloat(m[2], 64)
		require.NoError(t, err)
		dt, err := torch.ParseDType(m[4])
		require.NoError(t, err)
		return torch.Normal(parseShape(t, m[3]), mean, std, gen, dt, dev)
	}
	t.Fatalf("rng.json: cannot parse draw %q", desc)
	return nil
}

func loadRNGCases(t *testing.T) rngCases {
	t.Helper()
	raw, err := os.ReadFile(testutil.Fixture(t, "torch/rng.json"))
	require.NoError(t, err)
	var c rngCases
	require.NoError(t, json.Unmarshal(raw, &c))
	require.NotEmpty(t, c.GeneratorCases)
	return c
}

func TestGeneratorMatchesPyTorch(t *testing.T) {
	testutil.NoLeak(t)
	cases := loadRNGCases(t)
	want := testutil.Tensors(t, testutil.Fixture(t, "torch/rng.safetensors"))
	for _, c := range cases.GeneratorCases {
		require.Len(t, c.Names, len(c.Order))
		gen, err := torch.NewGenerator(torch.CPU, c.Seed)
		require.NoError(t, err)
		require.Equal(t, c.Seed, gen.Seed())
		s := torch.NewScope()
		for i, desc := range c.Order {
			w, ok := want[c.Names[i]]
			require.True(t, ok, "rng.safetensors has no %s", c.Names[i])
			testutil.AssertEqual(t, c.Names[i]+" ("+desc+")", draw(t, desc, gen, torch.CPU), w)
		}
		s.Close()
	}
}

func TestGlobalSeedMatchesPyTorch(t *testing.T) {
	testutil.NoLeak(t)
	cases := loadRNGCases(t)
	g := cases.GlobalCase
	want := testutil.Tensors(t, testutil.Fixture(t, "torch/rng.safetensors"))[g.Name]
	require.NotNil(t, want, "rng.safetensors has no %s", g.Name)
	require.Contains(t, g.Draw, "default CPU generator")
	m := drawRE.FindStringSubmatch(g.Draw)
	require.NotNil(t, m, "cannot parse %q", g.Draw)
	dt, err := torch.ParseDType(m[3])
	require.NoError(t, err)

	for range 2 { // reseeding restarts the sequence
		require.NoError(t, torch.ManualSeed(g.ManualSeed))
		got := torch.Randn(parseShape(t, m[2]), nil, dt, torch.CPU)
		testutil.AssertEqual(t, g.Name, got, want)
		got.Close()
	}
}

func TestGeneratorStateAndReseed(t *testing.T) {
	testutil.NoLeak(t)
	s := torch.NewScope()
	defer s.Close()
	gen := torch.MustGenerator(torch.CPU, 7)
	state := gen.State()
	a := torch.Randn([]int64{16}, gen, torch.Float32, torch.CPU)
	b := torch.Randn([]int64{16}, gen, torch.Float32, torch.CPU)
	require.False(t, a.Equal(b), "two draws of one generator must differ")

	require.NoError(t, gen.SetState(state))
	testutil.AssertEqual(t, "after set_state", torch.Randn([]int64{16}, gen, torch.Float32, torch.CPU), a)
	require.NoError(t, gen.ManualSeed(7))
	testutil.AssertEqual(t, "after manual_seed", torch.Randn([]int64{16}, gen, torch.Float32, torch.CPU), a)
	require.Equal(t, uint64(7), gen.Seed())

	// Two generators do not share state.
	g1, g2 := torch.MustGenerator(torch.CPU, 99), torch.MustGenerator(torch.CPU, 99)
	x1 := torch.Randn([]int64{8}, g1, torch.Float32, torch.CPU)
	torch.Randn([]int64{8}, g1, torch.Float32, torch.CPU)
	x2 := torch.Randn([]int64{8}, g2, torch.Float32, torch.CPU)
	testutil.AssertEqual(t, "independent generators", x2, x1)
}

// TestCUDAGenerator runs with DP2O_DEVICE=cuda: a CUDA generator seeded the
// same way draws the same numbers, independently of the default generator.
func TestCUDAGenerator(t *testing.T) {
	dev := testutil.Device(t)
	if !dev.IsCUDA() {
		t.Skip("DP2O_DEVICE is not cuda")
	}
	testutil.NoLeak(t)
	s := torch.NewScope()
	defer s.Close()
	drawAll := func(seed uint64) []*torch.Tensor {
		gen, err := torch.NewGenerator(dev, seed)
		require.NoError(t, err)
		require.Equal(t, dev.Type, gen.Device().Type)
		out := []*torch.Tensor{
			torch.Randn([]int64{2, 3}, gen, torch.Float32, dev),
			torch.Randn([]int64{1, 4, 16, 16}, gen, torch.Float32, dev),
			torch.Rand([]int64{4, 4}, gen, torch.Float32, dev),
			torch.Normal([]int64{10}, 0.5, 2.0, gen, torch.Float32, dev),
			torch.Randn([]int64{5}, gen, torch.Float64, dev),
		}
		for _, o := range out {
			require.True(t, o.Device().IsCUDA())
		}
		return out
	}
	a := drawAll(1234)
	require.NoError(t, torch.ManualSeed(1)) // the default generator does not disturb a private one
	torch.Randn([]int64{100}, nil, torch.Float32, dev)
	b := drawAll(1234)
	c := drawAll(1235)
	for i := range a {
		testutil.AssertEqual(t, "cuda draw", b[i], a[i])
	}
	require.False(t, a[1].Equal(c[1]), "different seeds gave the same numbers")

	require.NoError(t, torch.ManualSeed(42))
	g1 := torch.Randn([]int64{64}, nil, torch.Float32, dev)
	require.NoError(t, torch.ManualSeed(42))
	g2 := torch.Randn([]int64{64}, nil, torch.Float32, dev)
	testutil.AssertEqual(t, "cuda default generator", g2, g1)
}
