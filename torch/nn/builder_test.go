package nn_test

import (
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/dp2osr/dp2o/internal/testutil"
	"github.com/dp2osr/dp2o/torch"
	"github.com/dp2osr/dp2o/torch/nn"
	"github.com/dp2osr/dp2o/torch/safetensors"
)

// source builds a MapSource of float32 tensors filled with 1, 2, 3, … from
// key → shape.
func source(shapes map[string][]int64) nn.MapSource {
	m := nn.MapSource{}
	for k, s := range shapes {
		n := int64(1)
		for _, d := range s {
			n *= d
		}
		m[k] = torch.Scoped(func() *torch.Tensor {
			return torch.Arange(1, float64(n)+1, 1, torch.Float32, torch.CPU).Reshape(s)
		})
	}
	return m
}

type block struct {
	fc   *nn.Linear
	norm *nn.LayerNorm
}

func newBlock(b *nn.Builder, dim int64) *block {
	return &block{fc: nn.NewLinear(b.Sub("fc"), dim, dim, true), norm: nn.NewLayerNorm(b.Sub("norm"), dim, 1e-5, true)}
}

func TestBuilderLoads(t *testing.T) {
	testutil.NoLeak(t)
	src := source(map[string][]int64{
		"blocks.0.fc.weight": {4, 4}, "blocks.0.fc.bias": {4}, "blocks.0.norm.weight": {4}, "blocks.0.norm.bias": {4},
		"blocks.1.fc.weight": {4, 4}, "blocks.1.fc.bias": {4}, "blocks.1.norm.weight": {4}, "blocks.1.norm.bias": {4},
	})
	defer src.Close()
	b := nn.NewBuilder(src, torch.Float32, torch.CPU)
	require.True(t, b.Sub("blocks").SubI(1).Sub("fc").Has("bias"))
	require.False(t, b.Has("nope"))
	require.Equal(t, "blocks.1", b.Sub("blocks").SubI(1).Prefix())
	var blocks []*block
	for i := range 2 {
		blocks = append(blocks, newBlock(b.Sub("blocks").SubI(i), 4))
	}
	require.Nil(t, b.GetOptional("absent", 3))
	p, err := b.Finish()
	require.NoError(t, err)
	defer p.Close()
	require.Equal(t, []string{"blocks.0.fc.weight", "blocks.0.fc.bias", "blocks.0.norm.weight", "blocks.0.norm.bias",
		"blocks.1.fc.weight", "blocks.1.fc.bias", "blocks.1.norm.weight", "blocks.1.norm.bias"}, p.Names)
	require.Equal(t, int64(2*(16+4+4+4)), p.NumElements())
	require.Equal(t, []int64{4, 4}, b.Requested()["blocks.1.fc.weight"])
	require.Same(t, blocks[1].fc.Weight, p.Get("blocks.1.fc.weight"))
	require.Same(t, blocks[1].fc.Weight, b.Sub("blocks.1.fc").Get("weight", 4, 4), "a key asked twice is one tensor")
	testutil.AssertEqual(t, "weight", blocks[1].fc.Weight, src["blocks.1.fc.weight"])

	// From a MapSource the parameters share storage with the source (no
	// copy) but have their own handles: closing the source leaves them valid.
	src.Close()
	require.Equal(t, []float32{1, 2, 3, 4}, blocks[0].fc.Bias.Float32s())

	s := torch.NewScope()
	x := torch.Ones([]int64{2, 4}, torch.Float32, torch.CPU)
	y := blocks[0].norm.Forward(blocks[0].fc.Forward(x))
	testutil.AssertEqual(t, "forward", y, torch.LayerNorm(torch.Linear(x, p.Get("blocks.0.fc.weight"), p.Get("blocks.0.fc.bias")),
		[]int64{4}, p.Get("blocks.0.norm.weight"), p.Get("blocks.0.norm.bias"), 1e-5))
	s.Close()
}

func TestBuilderReportsKeys(t *testing.T) {
	testutil.NoLeak(t)
	src := source(map[string][]int64{
		"fc.weight": {3, 5}, // model wants [4, 5]
		"fc.bias":   {4},
		"extra.a":   {1}, "extra.b": {2},
		"conv.weight": {8, 3, 3, 3},
	})
	defer src.Close()
	before := torch.LiveTensors()
	b := nn.NewBuilder(src, torch.Float32, torch.CPU)
	nn.NewLinear(b.Sub("fc"), 5, 4, true)
	nn.NewConv2d(b.Sub("conv"), 3, 8, 3, nn.Conv2dConfig{Padding: 1}) // conv.bias missing
	nn.NewLayerNorm(b.Sub("ln"), 8, 1e-5, true)                       // both missing
	p, err := b.Finish()
	require.Nil(t, p)
	require.Error(t, err)
	require.True(t, errors.Is(err, nn.ErrWeights))
	msg := err.Error()
	require.Contains(t, msg, "3 missing keys: conv.bias, ln.bias, ln.weight")
	require.Contains(t, msg, "1 shape mismatches: fc.weight: checkpoint [3 5], model [4 5]")
	require.Contains(t, msg, "2 unexpected keys: extra.a, extra.b")
	require.Equal(t, before, torch.LiveTensors(), "Finish frees what was loaded on error")

	// AllowUnused accepts the extra keys but not the rest.
	b = nn.NewBuilder(src, torch.Float32, torch.CPU, nn.AllowUnused())
	nn.NewConv2d(b.Sub("conv"), 3, 8, 3, nn.Conv2dConfig{NoBias: true})
	p, err = b.Finish()
	require.NoError(t, err)
	p.Close()

	// Many missing keys are listed up to 20, then counted.
	b = nn.NewBuilder(nn.MapSource{}, torch.Float32, torch.CPU)
	for i := range 25 {
		b.Get("k"+strconv.Itoa(100+i), 1)
	}
	_, err = b.Finish()
	require.ErrorContains(t, err, "25 missing keys: k100, k101")
	require.ErrorContains(t, err, "(5 more)")
	require.NotContains(t, err.Error(), "k124")
}

func TestBuilderConvertsDTypes(t *testing.T) {
	testutil.NoLeak(t)
	dir := t.TempDir()
	path := filepath.Join(dir, "w.safetensors")
	half := torch.Scoped(func() *torch.Tensor { return torch.FromSlice([]float32{0.1, -2.5, 3}).To(torch.Float16) })
	defer half.Close()
	steps := torch.Unscope(torch.ScalarOf(7, torch.Int64, torch.CPU))
	defer steps.Close()
	f32 := torch.Unscope(torch.FromSlice([]float32{1.0000001, 2, 3}))
	defer f32.Close()
	var ts []safetensors.Tensor
	for name, x := range map[string]*torch.Tensor{"h.weight": half, "bn.num_batches_tracked": steps, "f.weight": f32} {
		ts = append(ts, safetensors.Tensor{Name: name, DType: safetensors.DType(x.DType().SafetensorsCode()), Shape: x.Shape(), Data: x.Bytes()})
	}
	require.NoError(t, safetensors.Save(path, ts, nil))
	src, err := nn.OpenSafetensors(path)
	require.NoError(t, err)
	defer src.Close()

	for _, dt := range []torch.DType{torch.Float32, torch.BFloat16, torch.Float16, torch.Float64} {
		b := nn.NewBuilder(src, dt, torch.CPU)
		h := b.Get("h.weight", 3)
		n := b.Get("bn.num_batches_tracked")
		f := b.Get("f.weight", 3)
		p, err := b.Finish()
		require.NoError(t, err)
		require.Equal(t, dt, h.DType(), "float weights take the builder's dtype")
		require.Equal(t, dt, f.DType())
		require.Equal(t, torch.Int64, n.DType(), "integer tensors keep theirs")
		require.Equal(t, int64(7), n.ItemInt())
		wantH := half.To(dt)
		testutil.AssertEqual(t, "h", h, wantH)
		wantH.Close()
		wantF := f32.To(dt)
		testutil.AssertEqual(t, "f", f, wantF)
		wantF.Close()
		p.Close()
	}
}

func TestBuilderOnMeta(t *testing.T) {
	testutil.NoLeak(t)
	rss := func() int64 {
		raw, err := os.ReadFile("/proc/self/statm")
		require.NoError(t, err)
		pages, err := strconv.ParseInt(strings.Fields(string(raw))[1], 10, 64)
		require.NoError(t, err)
		return pages * int64(os.Getpagesize())
	}
	before := rss()
	// 4·10¹⁰ parameters (160 GB in float32): only possible without data.
	b := nn.NewBuilder(nil, torch.Float32, torch.Meta)
	l := nn.NewLinear(b.Sub("huge"), 200000, 200000, true)
	p, err := b.Finish()
	require.NoError(t, err)
	defer p.Close()
	require.Equal(t, torch.Meta, l.Weight.Device())
	require.Equal(t, []int64{200000, 200000}, l.Weight.Shape())
	require.Equal(t, int64(200000*200000+200000), p.NumElements())
	require.Less(t, rss()-before, int64(64<<20), "the meta device allocated memory")
	y := torch.Scoped(func() *torch.Tensor { return l.Forward(torch.Empty([]int64{2, 200000}, torch.Float32, torch.Meta)) })
	require.Equal(t, torch.Meta, y.Device())
	require.Equal(t, []int64{2, 200000}, y.Shape(), "shapes propagate on meta")
	y.Close()
	err = torch.Try(func() { l.Bias.Bytes() })
	require.Error(t, err, "meta tensors have no data")

	// From a checkpoint: shapes are checked and dtypes converted, no data read.
	src := source(map[string][]int64{"fc.weight": {3, 2}, "fc.bias": {3}})
	defer src.Close()
	b = nn.NewBuilder(src, torch.BFloat16, torch.Meta)
	fc := nn.NewLinear(b.Sub("fc"), 2, 3, true)
	p2, err := b.Finish()
	require.NoError(t, err)
	defer p2.Close()
	require.Equal(t, torch.Meta, fc.Weight.Device())
	require.Equal(t, torch.BFloat16, fc.Weight.DType())
	require.Equal(t, []int64{3, 2}, fc.Weight.Shape())

	b = nn.NewBuilder(src, torch.Float32, torch.Meta)
	nn.NewLinear(b.Sub("fc"), 2, 4, true)
	_, err = b.Finish()
	require.ErrorContains(t, err, "fc.weight: checkpoint [3 2], model [4 2]")
}

func TestBuilderWithoutSource(t *testing.T) {
	testutil.NoLeak(t)
	b := nn.NewBuilder(nil, torch.Float16, torch.CPU)
	c := nn.NewConv2d(b.Sub("c"), 4, 8, 3, nn.Conv2dConfig{Stride: 2, Padding: 1, Groups: 2})
	g := nn.NewGroupNorm(b.Sub("g"), 2, 8, 1e-6)
	e := nn.NewEmbedding(b.Sub("e"), 10, 8)
	r := nn.NewRMSNorm(b.Sub("r"), 8, 1e-6, true)
	require.Nil(t, b.GetOptional("opt", 2), "no source: optional weights are absent")
	p, err := b.Finish()
	require.NoError(t, err)
	defer p.Close()
	require.Equal(t, []int64{8, 2, 3, 3}, c.Weight.Shape())
	require.Equal(t, torch.Float16, c.Weight.DType())
	require.Equal(t, []float64{0, 0, 0, 0, 0, 0, 0, 0}, g.Weight.Float64s(), "zero-initialised")
	require.Equal(t, []int64{10, 8}, e.Weight.Shape())
	require.Equal(t, []int64{8}, r.Weight.Shape())
	require.Len(t, p.List(), 6)
	require.Equal(t, torch.CPU, b.Device())
	require.Equal(t, torch.Float16, b.DType())
}
