package torch_test

import (
	"bytes"
	"encoding/json"
	"math"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/dp2osr/dp2o/internal/testutil"
	"github.com/dp2osr/dp2o/torch"
	"github.com/dp2osr/dp2o/torch/safetensors"
)

// opCase is one entry of the "cases" list in ops.safetensors' metadata
// (written by testdata/gen_ops.py with PyTorch 1.13).
type opCase struct {
	Name    string         `json:"name"`
	Op      string         `json:"op"`
	Args    map[string]any `json:"args"`
	Inputs  []string       `json:"inputs"`
	Outputs []string       `json:"outputs"`
	Exact   bool           `json:"exact"`
}

type opArgs struct {
	t    *testing.T
	c    opCase
	in   []*torch.Tensor // nil for an absent optional input
	seen map[string]bool
}

func (a *opArgs) raw(k string) any {
	a.t.Helper()
	v, ok := a.c.Args[k]
	require.True(a.t, ok, "%s: no argument %q", a.c.Name, k)
	a.seen[k] = true
	return v
}

func (a *opArgs) Int(k string) int64 {
	a.t.Helper()
	n, err := a.raw(k).(json.Number).Int64()
	require.NoError(a.t, err, "%s: %s", a.c.Name, k)
	return n
}

func (a *opArgs) Float(k string) float64 {
	a.t.Helper()
	switch v := a.raw(k).(type) {
	case json.Number:
		f, err := v.Float64()
		require.NoError(a.t, err)
		return f
	case string: // non-finite values
		f, err := strconv.ParseFloat(v, 64)
		require.NoError(a.t, err, "%s: %s", a.c.Name, k)
		return f
	}
	a.t.Fatalf("%s: %s is not a number", a.c.Name, k)
	return 0
}

func (a *opArgs) Bool(k string) bool { return a.raw(k).(bool) }
func (a *opArgs) Str(k string) string {
	return a.raw(k).(string)
}

// Ints returns an int list argument (nil for JSON null).
func (a *opArgs) Ints(k string) []int64 {
	a.t.Helper()
	v := a.raw(k)
	if v == nil {
		return nil
	}
	out := []int64{}
	for _, e := range v.([]any) {
		n, err := e.(json.Number).Int64()
		require.NoError(a.t, err)
		out = append(out, n)
	}
	return out
}

var interpModes = map[string]torch.InterpolateMode{
	"nearest": torch.Nearest, "bilinear": torch.Bilinear, "bicubic": torch.Bicubic, "nearest-exact": torch.NearestExact,
}

var padModes = map[string]torch.PadMode{
	"constant": torch.PadConstant, "reflect": torch.PadReflect, "replicate": torch.PadReplicate,
}

func one(t *torch.Tensor) []*torch.Tensor { return []*torch.Tensor{t} }

// sdpaImpl replays F.scaled_dot_product_attention in the reference's math
// order, or (math false) through libtorch's fused kernels, which 2.x has and
// the CUDA pipelines use (1.x runs the math order either way).
func sdpaImpl(math bool) func(a *opArgs) []*torch.Tensor {
	return func(a *opArgs) []*torch.Tensor {
		return one(torch.ScaledDotProductAttention(a.in[0], a.in[1], a.in[2],
			torch.AttentionOpts{Mask: a.in[3], Causal: a.Bool("causal"), Scale: a.Float("scale"), Math: math}))
	}
}

// opImpls replays each op of gen_ops.py through the binding.
var opImpls = map[string]func(a *opArgs) []*torch.Tensor{
	"interpolate": func(a *opArgs) []*torch.Tensor {
		mode, ok := interpModes[a.Str("mode")]
		require.True(a.t, ok)
		return one(a.in[0].Interpolate(a.Ints("size"), mode, a.Bool("align_corners"), a.Bool("antialias")))
	},
	"pad": func(a *opArgs) []*torch.Tensor {
		mode, ok := padModes[a.Str("mode")]
		require.True(a.t, ok)
		return one(a.in[0].Pad(a.Ints("pad"), mode, a.Float("value")))
	},
	"sdpa":        sdpaImpl(true),
	"gelu":        func(a *opArgs) []*torch.Tensor { return one(a.in[0].Gelu()) },
	"gelu_tanh":   func(a *opArgs) []*torch.Tensor { return one(a.in[0].GeluTanh()) },
	"silu":        func(a *opArgs) []*torch.Tensor { return one(a.in[0].Silu()) },
	"relu":        func(a *opArgs) []*torch.Tensor { return one(a.in[0].Relu()) },
	"sigmoid":     func(a *opArgs) []*torch.Tensor { return one(a.in[0].Sigmoid()) },
	"tanh":        func(a *opArgs) []*torch.Tensor { return one(a.in[0].Tanh()) },
	"logsigmoid":  func(a *opArgs) []*torch.Tensor { return one(a.in[0].LogSigmoid()) },
	"softmax":     func(a *opArgs) []*torch.Tensor { return one(a.in[0].Softmax(a.Int("dim"))) },
	"log_softmax": func(a *opArgs) []*torch.Tensor { return one(a.in[0].LogSoftmax(a.Int("dim"))) },
	"var": func(a *opArgs) []*torch.Tensor {
		if dims := a.Ints("dims"); dims != nil {
			return one(a.in[0].Var(dims, a.Bool("unbiased"), a.Bool("keepdim")))
		}
		a.Bool("keepdim")
		return one(a.in[0].VarAll(a.Bool("unbiased")))
	},
	"std": func(a *opArgs) []*torch.Tensor {
		if dims := a.Ints("dims"); dims != nil {
			return one(a.in[0].Std(dims, a.Bool("unbiased"), a.Bool("keepdim")))
		}
		a.Bool("keepdim")
		return one(a.in[0].StdAll(a.Bool("unbiased")))
	},
	"norm": func(a *opArgs) []*torch.Tensor {
		if dims := a.Ints("dims"); dims != nil {
			return one(a.in[0].NormDims(a.Float("p"), dims, a.Bool("keepdim")))
		}
		a.Bool("keepdim")
		return one(a.in[0].Norm(a.Float("p")))
	},
	"cumsum": func(a *opArgs) []*torch.Tensor { return one(a.in[0].Cumsum(a.Int("dim"))) },
	"topk": func(a *opArgs) []*torch.Tensor {
		v, i := a.in[0].Topk(a.Int("k"), a.Int("dim"), a.Bool("largest"))
		return []*torch.Tensor{v, i}
	},
	"group_norm": func(a *opArgs) []*torch.Tensor {
		return one(torch.GroupNorm(a.in[0], a.Int("groups"), a.in[1], a.in[2], a.Float("eps")))
	},
	"layer_norm": func(a *opArgs) []*torch.Tensor {
		return one(torch.LayerNorm(a.in[0], a.Ints("shape"), a.in[1], a.in[2], a.Float("eps")))
	},
	"conv2d": func(a *opArgs) []*torch.Tensor {
		return one(torch.Conv2d(a.in[0], a.in[1], a.in[2], a.Ints("stride"), a.Ints("padding"), a.Ints("dilation"), a.Int("groups")))
	},
	"conv_transpose2d": func(a *opArgs) []*torch.Tensor {
		return one(torch.ConvTranspose2d(a.in[0], a.in[1], a.in[2], a.Ints("stride"), a.Ints("padding"),
			a.Ints("output_padding"), a.Int("groups"), a.Ints("dilation")))
	},
	"baddbmm": func(a *opArgs) []*torch.Tensor {
		return one(a.in[0].Baddbmm(a.in[1], a.in[2], a.Float("beta"), a.Float("alpha")))
	},
	"matmul":          func(a *opArgs) []*torch.Tensor { return one(a.in[0].Matmul(a.in[1])) },
	"linear":          func(a *opArgs) []*torch.Tensor { return one(torch.Linear(a.in[0], a.in[1], a.in[2])) },
	"pixel_shuffle":   func(a *opArgs) []*torch.Tensor { return one(a.in[0].PixelShuffle(a.Int("r"))) },
	"pixel_unshuffle": func(a *opArgs) []*torch.Tensor { return one(a.in[0].PixelUnshuffle(a.Int("r"))) },
	"gather":          func(a *opArgs) []*torch.Tensor { return one(a.in[0].Gather(a.Int("dim"), a.in[1])) },
	"index_select":    func(a *opArgs) []*torch.Tensor { return one(a.in[0].IndexSelect(a.Int("dim"), a.in[1])) },
	"slice": func(a *opArgs) []*torch.Tensor {
		return one(a.in[0].Slice(a.Int("dim"), a.Int("start"), a.Int("end"), a.Int("step")))
	},
	"chunk": func(a *opArgs) []*torch.Tensor { return a.in[0].Chunk(a.Int("chunks"), a.Int("dim")) },
	"split": func(a *opArgs) []*torch.Tensor { return a.in[0].Split(a.Int("size"), a.Int("dim")) },
	"split_with_sizes": func(a *opArgs) []*torch.Tensor {
		return a.in[0].SplitSizes(a.Ints("sizes"), a.Int("dim"))
	},
	"where":        func(a *opArgs) []*torch.Tensor { return one(torch.Where(a.in[0], a.in[1], a.in[2])) },
	"masked_fill":  func(a *opArgs) []*torch.Tensor { return one(a.in[0].MaskedFill(a.in[1], a.Float("value"))) },
	"clamp":        func(a *opArgs) []*torch.Tensor { return one(a.in[0].Clamp(a.Float("min"), a.Float("max"))) },
	"clamp_min":    func(a *opArgs) []*torch.Tensor { return one(a.in[0].ClampMin(a.Float("min"))) },
	"clamp_max":    func(a *opArgs) []*torch.Tensor { return one(a.in[0].ClampMax(a.Float("max"))) },
	"mlp_grad":     mlpGrad,
	"mlp_grad_arg": mlpGradArg,
}

type opsFixture struct {
	cases   []opCase
	tensors map[string]*torch.Tensor
}

func loadOps(t *testing.T) opsFixture {
	t.Helper()
	// Generated by testdata/gen_ops.py for this package, so read from its own
	// testdata/ even when $DP2O_FIXTURES points at the shared fixtures.
	path := filepath.Join("testdata", "ops.safetensors")
	f, err := safetensors.Open(path)
	require.NoError(t, err)
	meta := f.Metadata()
	require.NoError(t, f.Close())
	dec := json.NewDecoder(bytes.NewReader([]byte(meta["cases"])))
	dec.UseNumber()
	var cases []opCase
	require.NoError(t, dec.Decode(&cases))
	require.NotEmpty(t, cases)
	return opsFixture{cases: cases, tensors: testutil.Tensors(t, path)}
}

// runCase replays one case and compares every output.
func runCase(t *testing.T, fx opsFixture, c opCase, impl func(a *opArgs) []*torch.Tensor) {
	t.Helper()
	require.NotNil(t, impl, "%s: no Go implementation of op %q", c.Name, c.Op)
	s := torch.NewScope()
	defer s.Close()
	a := &opArgs{t: t, c: c, seen: map[string]bool{}}
	for _, n := range c.Inputs {
		if n == "" {
			a.in = append(a.in, nil)
			continue
		}
		x, ok := fx.tensors[n]
		require.True(t, ok, "%s: no input %s", c.Name, n)
		a.in = append(a.in, x)
	}
	var got []*torch.Tensor
	err := torch.Try(func() { got = impl(a) })
	require.NoError(t, err, c.Name)
	for k := range c.Args {
		require.True(t, a.seen[k], "%s: argument %q was not used", c.Name, k)
	}
	require.Len(t, got, len(c.Outputs), "%s: number of outputs", c.Name)
	for i, n := range c.Outputs {
		want := fx.tensors[n]
		require.NotNil(t, want, n)
		require.Equal(t, want.DType(), got[i].DType(), n)
		if c.Exact {
			testutil.AssertEqual(t, n, got[i], want)
		} else {
			require.Equal(t, want.Shape(), got[i].Shape(), n)
			assertCloseInf(t, n, got[i], want, opTolerance())
		}
	}
}

// assertCloseInf is AssertClose at atol = rtol = tol that also requires
// infinities (and NaNs) to sit at the same places with the same sign.
func assertCloseInf(t *testing.T, name string, got, want *torch.Tensor, tol float64) {
	t.Helper()
	g, w := got.Float64s(), want.Float64s()
	maxAbs := 0.0
	for i := range w {
		if math.IsInf(w[i], 0) || math.IsNaN(w[i]) {
			require.Equal(t, math.Float64bits(w[i]), math.Float64bits(g[i]), "%s[%d]", name, i)
			continue
		}
		d := math.Abs(g[i] - w[i])
		maxAbs = max(maxAbs, d)
		if d > tol+tol*math.Abs(w[i]) {
			t.Fatalf("%s[%d]: got %v, want %v (|diff| %.3g > %.1g)", name, i, g[i], w[i], d, tol)
		}
	}
	t.Logf("%s: max |diff| %.3g", name, maxAbs)
}

func TestOpsMatchPyTorch(t *testing.T) {
	testutil.NoLeak(t)
	fx := loadOps(t)
	ops := map[string]int{}
	for _, c := range fx.cases {
		if strings.HasPrefix(c.Op, "mlp_") {
			continue // TestAutogradMatchesPyTorch
		}
		ops[c.Op]++
		t.Run(c.Name, func(t *testing.T) { runCase(t, fx, c, opImpls[c.Op]) })
		if c.Op == "sdpa" {
			t.Run(c.Name+"/fused", func(t *testing.T) { runCase(t, fx, c, sdpaImpl(false)) })
		}
	}
	// The file covers what it should.
	for _, op := range []string{"interpolate", "pad", "sdpa", "gelu", "gelu_tanh", "silu", "softmax", "log_softmax",
		"logsigmoid", "var", "std", "norm", "group_norm", "layer_norm", "conv2d", "conv_transpose2d", "baddbmm",
		"pixel_shuffle", "pixel_unshuffle", "gather", "index_select", "slice", "chunk", "split", "where",
		"masked_fill", "clamp", "cumsum", "topk"} {
		require.Positive(t, ops[op], "ops.safetensors has no %s case", op)
	}
}

// opTolerance is 1e-6 against the goldens of libtorch 1.13, which the
// default build links (most cases are bit-exact there); other libtorch
// versions vectorise some CPU kernels (gelu, bicubic) differently, to a few
// 1e-6.
func opTolerance() float64 {
	if strings.HasPrefix(torch.Version(), "1.13") {
		return 1e-6
	}
	return 1e-5
}
