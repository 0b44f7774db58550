package swin

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/dp2osr/dp2o/internal/ramfixture"
	"github.com/dp2osr/dp2o/internal/testutil"
	"github.com/dp2osr/dp2o/torch"
	"github.com/dp2osr/dp2o/torch/nn"
)

// casesFile is fixtures/ram/swin/cases.json.
type casesFile struct {
	Model  json.RawMessage `json:"model"`
	Blocks []struct {
		Stage      int      `json:"stage"`
		Block      int      `json:"block"`
		Dim        int64    `json:"dim"`
		Heads      int64    `json:"heads"`
		Resolution [2]int64 `json:"resolution"`
		Window     int64    `json:"window"`
		Shift      int64    `json:"shift"`
		Masked     bool     `json:"masked"`
	} `json:"blocks"`
	Cases []struct {
		Name        string             `json:"name"`
		Input       string             `json:"input"`
		Stages      string             `json:"stages"`
		Out         string             `json:"out"`
		Shapes      map[string][]int64 `json:"shapes"`
		ProbeTokens map[string][]int64 `json:"probe_tokens"`
	} `json:"cases"`
}

func readCases(t testing.TB) casesFile {
	t.Helper()
	raw, err := os.ReadFile(testutil.Fixture(t, "ram/swin/cases.json"))
	require.NoError(t, err)
	var c casesFile
	require.NoError(t, json.Unmarshal(raw, &c))
	require.NotEmpty(t, c.Cases)
	return c
}

func (c casesFile) config() (Config, error) { return ParseConfig(c.Model) }

// ramSwin is the fixture's encoder built once for the package from the
// regenerated weights (visual_encoder.* of the RAM base).
var ramSwin = sync.OnceValues(func() (*Model, error) {
	raw, err := os.ReadFile(filepath.Join(fixtureDir(), "ram/swin/cases.json"))
	if err != nil {
		return nil, err
	}
	var c casesFile
	if err := json.Unmarshal(raw, &c); err != nil {
		return nil, err
	}
	w, err := ramfixture.Read(filepath.Join(fixtureDir(), "ram/weights"))
	if err != nil {
		return nil, err
	}
	const prefix = "visual_encoder."
	src, err := w.BaseWeights(func(k string) bool { return strings.HasPrefix(k, prefix) })
	if err != nil {
		return nil, err
	}
	defer src.Close()
	cfg, err := c.config()
	if err != nil {
		return nil, err
	}
	m, _, err := nn.Build(src, torch.Float32, torch.CPU, func(b *nn.Builder) (*Model, error) {
		return New(b.Sub(strings.TrimSuffix(prefix, ".")), cfg)
	})
	return m, err
})

func fixtureDir() string {
	if d := os.Getenv("DP2O_FIXTURES"); d != "" {
		return d
	}
	return "testdata"
}

// TestBlockLayout checks the per-block windows, shifts and masks the model
// derives from the config against the fixture's list.
func TestBlockLayout(t *testing.T) {
	testutil.NoLeak(t)
	c := readCases(t)
	cfg, err := c.config()
	require.NoError(t, err)
	b := nn.NewBuilder(nil, torch.Float32, torch.Meta)
	m, err := New(b, cfg)
	require.NoError(t, err)
	defer b.Params().Close()
	defer m.Close()
	var n int
	for i, st := range m.Layers {
		for j, blk := range st.Blocks {
			require.Less(t, n, len(c.Blocks))
			want := c.Blocks[n]
			n++
			name := fmt.Sprintf("layers.%d.blocks.%d", i, j)
			require.Equal(t, [2]int{want.Stage, want.Block}, [2]int{i, j}, name)
			require.Equal(t, want.Resolution, [2]int64{blk.H, blk.W}, name)
			require.Equal(t, want.Window, blk.Window, name)
			require.Equal(t, want.Shift, blk.Shift, name)
			require.Equal(t, want.Masked, blk.Mask != nil, name)
			require.Equal(t, want.Heads, blk.Attn.Heads, name)
			require.Equal(t, want.Dim, blk.Norm1.Dim, name)
		}
	}
	require.Equal(t, len(c.Blocks), n)
}

// TestShiftMask checks the mask against a direct transcription of the
// official construction (region labels of the rolled grid).
func TestShiftMask(t *testing.T) {
	for _, tc := range []struct{ h, w, win, shift int64 }{{8, 8, 4, 2}, {12, 8, 4, 2}, {6, 6, 3, 1}} {
		got := ShiftMask(tc.h, tc.w, tc.win, tc.shift)
		n := tc.win * tc.win
		nwx := tc.w / tc.win
		label := func(y, x int64) int64 {
			cut := func(p, size int64) int64 {
				if p < size-tc.win {
					return 0
				} else if p < size-tc.shift {
					return 1
				}
				return 2
			}
			return cut(y, tc.h)*3 + cut(x, tc.w)
		}
		for k := int64(0); k < int64(len(got))/(n*n); k++ {
			oy, ox := (k/nwx)*tc.win, (k%nwx)*tc.win
			for i := int64(0); i < n; i++ {
				for j := int64(0); j < n; j++ {
					want := float32(0)
					if label(oy+i/tc.win, ox+i%tc.win) != label(oy+j/tc.win, ox+j%tc.win) {
						want = -100
					}
					require.Equal(t, want, got[(k*n+i)*n+j])
				}
			}
		}
	}
	// The bottom-right window of a shifted grid mixes 4 regions; the
	// top-left one none.
	m := ShiftMask(8, 8, 4, 2)
	require.Equal(t, float32(0), m[0*16+15])
	require.Equal(t, float32(-100), m[3*16*16+0*16+15])
}

func TestRelativePositionIndex(t *testing.T) {
	idx := RelativePositionIndex([2]int64{2, 3})
	// (yi−yj+1)·5 + (xi−xj+2): token 0 = (0,0) against token 5 = (1,2).
	require.Equal(t, int64((0-1+1)*5+(0-2+2)), idx[0*6+5])
	require.Equal(t, int64((1-0+1)*5+(2-0+2)), idx[5*6+0])
	require.Equal(t, int64(1*5+2), idx[3*6+3])
}

// TestFixture runs every case of fixtures/ram/swin through the full-size
// encoder and compares each intermediate in forward order.
func TestFixture(t *testing.T) {
	c := readCases(t)
	m, err := ramSwin()
	require.NoError(t, err)
	testutil.NoLeak(t)
	for _, tc := range c.Cases {
		t.Run(tc.Name, func(t *testing.T) {
			in := testutil.Tensors(t, testutil.Fixture(t, "ram/swin/"+tc.Input))
			want := testutil.Tensors(t, testutil.Fixture(t, "ram/swin/"+tc.Stages))
			for k, v := range testutil.Tensors(t, testutil.Fixture(t, "ram/swin/"+tc.Out)) {
				want[k] = v
			}
			for name, shape := range tc.Shapes {
				if w, ok := want[name]; ok {
					require.Equal(t, shape, w.Shape(), name)
				}
			}
			got := map[string]*torch.Tensor{}
			defer func() {
				for _, v := range got {
					v.Close()
				}
			}()
			// A "<name>.head" reference holds the first tokens of <name>;
			// "probe.<block>" the block's output at probe_tokens[stage].
			m.Tap = func(name string, x *torch.Tensor) {
				if w, ok := want[name+".head"]; ok {
					got[name+".head"] = torch.Unscope(x.Narrow(1, 0, w.Size(1)).Contiguous())
				}
				if _, ok := want[name]; ok {
					got[name] = torch.Unscope(x.Clone())
				}
				if _, ok := want["probe."+name]; ok {
					stage := strings.Split(name, ".")[1]
					tokens := tc.ProbeTokens[stage]
					require.NotEmpty(t, tokens, name)
					idx := torch.FromSlice(tokens, int64(len(tokens)))
					got["probe."+name] = torch.Unscope(x.IndexSelect(1, idx))
					idx.Close()
				}
			}
			defer func() { m.Tap = nil }()
			var order []string
			var out *torch.Tensor
			require.NoError(t, torch.Try(func() {
				torch.NoGrad(func() { out = m.Forward(in["pixel_values"]) })
			}))
			defer out.Close()
			// Compare in forward order, so that the first failure names the
			// first block that diverges.
			order = append(order, "patch_embed.head")
			for i, st := range m.Layers {
				for j := range st.Blocks {
					order = append(order, fmt.Sprintf("probe.layers.%d.blocks.%d", i, j))
				}
				order = append(order, fmt.Sprintf("layers.%d", i), fmt.Sprintf("layers.%d.head", i))
			}
			order = append(order, "output")
			seen := 0
			for _, name := range order {
				w, ok := want[name]
				if !ok {
					continue
				}
				g, ok := got[name]
				require.True(t, ok, "no intermediate for %s", name)
				seen++
				testutil.AssertClose(t, name, g, w, 1e-4*maxAbs(w), 0)
			}
			var wantN int
			for name := range want {
				if strings.HasPrefix(name, "pixel_values") {
					continue
				}
				wantN++
			}
			require.Equal(t, wantN, seen, "every reference tensor is compared")
		})
	}
}

func maxAbs(t *torch.Tensor) float64 {
	var m float64
	for _, v := range t.Float64s() {
		if v < 0 {
			v = -v
		}
		m = max(m, v)
	}
	return m
}

// TestBadInput: an image of another size or rank is an error naming the
// expected size, not a crash.
func TestBadInput(t *testing.T) {
	c := readCases(t)
	cfg, err := c.config()
	require.NoError(t, err)
	m, err := ramSwin()
	require.NoError(t, err)
	testutil.NoLeak(t)
	for _, shape := range [][]int64{{1, 3, cfg.ImageSize / 2, cfg.ImageSize}, {3, cfg.ImageSize, cfg.ImageSize}} {
		x := torch.Zeros(shape, torch.Float32, torch.CPU)
		out, err := m.Encode(x)
		x.Close()
		require.Nil(t, out)
		require.ErrorContains(t, err, fmt.Sprintf("%d×%d", cfg.ImageSize, cfg.ImageSize))
	}
	_, err = New(nn.NewBuilder(nil, torch.Float32, torch.Meta), Config{ImageSize: 100, PatchSize: 4, InChans: 3, EmbedDim: 8,
		Depths: []int64{2, 2}, NumHeads: []int64{2, 2}, WindowSize: 7, MLPRatio: 4, LayerNormEps: 1e-5})
	require.ErrorContains(t, err, "windows")
}
