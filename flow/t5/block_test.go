package t5

import (
	"math"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/dp2osr/dp2o/internal/testutil"
	"github.com/dp2osr/dp2o/torch"
	"github.com/dp2osr/dp2o/torch/detinit"
	"github.com/dp2osr/dp2o/torch/nn"
)

// TestClampFloat16 checks T5Block's float16 guard: values stay when all
// are finite, and everything is clamped to ±(max − 1000) once one is
// infinite; other dtypes pass through.
func TestClampFloat16(t *testing.T) {
	testutil.NoLeak(t)
	s := torch.NewScope()
	defer s.Close()
	finite := torch.FromSlice([]float32{1, -2, float16Max, -float16Max}).To(torch.Float16)
	testutil.AssertEqual(t, "finite float16", clampFloat16(finite), finite)

	inf := float32(math.Inf(1))
	x := torch.FromSlice([]float32{1, -2, inf, -inf, float16Max}).To(torch.Float16)
	lim := float64(float16Max - 1000)
	want := torch.FromSlice([]float32{1, -2, float32(lim), float32(-lim), float32(lim)}).To(torch.Float16)
	testutil.AssertEqual(t, "float16 with inf", clampFloat16(x), want)

	f32 := torch.FromSlice([]float32{1, inf})
	testutil.AssertEqual(t, "float32", clampFloat16(f32), f32)
}

// TestGeluNew checks transformers' NewGELUActivation formula against
// float64 arithmetic and its closeness to PyTorch's tanh GELU.
func TestGeluNew(t *testing.T) {
	testutil.NoLeak(t)
	s := torch.NewScope()
	defer s.Close()
	x := torch.Linspace(-6, 6, 97, torch.Float64, torch.CPU)
	got := GeluNew(x).Float64s()
	for i, v := range x.Float64s() {
		want := 0.5 * v * (1 + math.Tanh(math.Sqrt(2/math.Pi)*(v+0.044715*v*v*v)))
		require.InDelta(t, want, got[i], 1e-12, "x = %g", v)
	}
	x32 := x.To(torch.Float32)
	testutil.AssertClose(t, "gelu_new vs gelu tanh", GeluNew(x32), x32.GeluTanh(), 1e-6, 1e-6)
}

// TestReluFeedForward builds an original-T5 block (feed_forward_proj
// "relu": wi and wo, no gate) and checks its feed-forward and the whole
// block against the same computation written with plain ops (the block's
// linears may take libtorch's XNNPACK path, the plain ones the BLAS: hence
// a tolerance).
func TestReluFeedForward(t *testing.T) {
	testutil.NoLeak(t)
	cfg, err := ParseConfig([]byte(`{"d_model": 16, "d_kv": 4, "num_heads": 2, "d_ff": 24, "num_layers": 2, "vocab_size": 50}`))
	require.NoError(t, err)
	require.False(t, cfg.IsGatedAct)
	b := nn.NewBuilder(nil, torch.Float32, torch.Meta)
	_, err = NewEncoder(b, cfg)
	require.NoError(t, err)
	meta, err := b.Finish()
	require.NoError(t, err)
	manifest := map[string]detinit.Spec{}
	for k, sh := range b.Requested() {
		manifest[k] = detinit.Spec{Shape: sh, DType: torch.Float32}
	}
	meta.Close()
	require.Contains(t, manifest, "encoder.block.1.layer.1.DenseReluDense.wi.weight")
	src, err := detinit.Build(manifest, 7, torch.CPU)
	require.NoError(t, err)
	defer src.Close()
	e, err := EncoderFromSource(src, cfg, torch.Float32, torch.CPU)
	require.NoError(t, err)
	defer e.Close()

	s := torch.NewScope()
	defer s.Close()
	ids := torch.FromSlice([]int64{3, 1, 4, 1, 5, 9, 2, 6}, 2, 4)
	out, err := e.ForwardHidden(ids)
	require.NoError(t, err)
	defer out.Close()
	// Plain ops: h + attn(norm(h)), h + wo(relu(wi(norm(h)))).
	h := torch.Embedding(src[SharedKey], ids)
	require.Equal(t, []int64{1, int64(cfg.NumHeads), 4, 4}, out.PositionBias.Shape())
	for i, blk := range e.Blocks {
		x := torch.RMSNorm(h, blk.AttnNorm.Weight, cfg.LayerNormEps)
		q := torch.Linear(x, blk.Q.Weight, nil).View([]int64{2, 4, 2, 4}).Transpose(1, 2)
		k := torch.Linear(x, blk.K.Weight, nil).View([]int64{2, 4, 2, 4}).Transpose(1, 2)
		v := torch.Linear(x, blk.V.Weight, nil).View([]int64{2, 4, 2, 4}).Transpose(1, 2)
		w := q.Matmul(k.Transpose(2, 3)).Add(out.PositionBias).Softmax(-1)
		a := w.Matmul(v).Transpose(1, 2).Reshape([]int64{2, 4, 8})
		h = h.Add(torch.Linear(a, blk.O.Weight, nil))
		x = torch.RMSNorm(h, blk.FFNorm.Weight, cfg.LayerNormEps)
		h = h.Add(torch.Linear(torch.Linear(x, blk.Wi.Weight, nil).Relu(), blk.Wo.Weight, nil))
		testutil.AssertClose(t, "block output", out.Hidden[i+1], h, 1e-5, 1e-5)
	}
	testutil.AssertClose(t, "last_hidden_state", out.LastHidden, torch.RMSNorm(h, e.FinalNorm.Weight, cfg.LayerNormEps), 1e-5, 1e-5)
}
