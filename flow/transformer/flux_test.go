package transformer

import (
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/dp2osr/dp2o/internal/testutil"
	"github.com/dp2osr/dp2o/torch"
)

func loadFixtureFlux(t testing.TB) *Flux {
	t.Helper()
	f, err := LoadFlux(testutil.Fixture(t, "flux/transformer"), torch.Float32, torch.CPU)
	require.NoError(t, err)
	t.Cleanup(f.Close)
	return f
}

// TestTransformerFixture runs every case of flux/transformer/io.safetensors
// (each prefix with an output) and compares every intermediate in forward
// order, the ControlNet injection indices and the output.
func TestTransformerFixture(t *testing.T) {
	testutil.NoLeak(t)
	f := loadFixtureFlux(t)
	ref := testutil.Tensors(t, testutil.Fixture(t, "flux/transformer/io.safetensors"))
	seen := map[string]bool{}
	markInputs(seen)
	cs := cases(ref, "output")
	require.NotEmpty(t, cs)
	for _, c := range cs {
		t.Run(c, func(t *testing.T) {
			rec := newTapRecorder(t)
			f.Tap = rec.tap
			defer func() { f.Tap = nil }()
			in := input(ref)
			in.ControlNetBlockSamples = indexed(t, ref, c+".controlnet_block_samples.", seen)
			in.ControlNetSingleBlockSamples = indexed(t, ref, c+".controlnet_single_block_samples.", seen)
			if want, ok := ref[c+".injection_index"]; ok {
				seen[c+".injection_index"] = true
				got := InjectionIndex(f.NumLayers(), len(in.ControlNetBlockSamples), false)
				g := torch.FromSlice(toInt64(got), int64(len(got)))
				defer g.Close()
				testutil.AssertEqual(t, c+".injection_index", g, want)
			}
			var out *torch.Tensor
			var err error
			torch.NoGrad(func() { out, err = f.Forward(in) })
			require.NoError(t, err)
			defer out.Close()
			for k, v := range rec.compare(t, ref, c+".", atolFor(transformerAtol)) {
				seen[k] = v
			}
			testutil.AssertClose(t, c+".output (returned)", out, ref[c+".output"], transformerAtol, 0)

			// Without a tap the model skips what only the taps read (the
			// last single block's text tokens): the same output.
			f.Tap = nil
			var fast *torch.Tensor
			torch.NoGrad(func() { fast, err = f.Forward(in) })
			require.NoError(t, err)
			defer fast.Close()
			testutil.AssertClose(t, c+".output (no tap)", fast, ref[c+".output"], transformerAtol, 0)

			// The same with every large temporary computed in small pieces
			// (attention heads and rows, MLP tokens), as at full size.
			withTinyChunks(t)
			var pieces *torch.Tensor
			torch.NoGrad(func() { pieces, err = f.Forward(in) })
			require.NoError(t, err)
			defer pieces.Close()
			testutil.AssertClose(t, c+".output (small pieces)", pieces, ref[c+".output"], transformerAtol, 0)

			// Attention the other way: libtorch's fused kernels on the CPU (as on CUDA), the math order on CUDA.
			withOtherAttention(t, f.blocks, f.singles)
			var other *torch.Tensor
			torch.NoGrad(func() { other, err = f.Forward(in) })
			require.NoError(t, err)
			defer other.Close()
			testutil.AssertClose(t, c+".output (other attention path)", other, ref[c+".output"], transformerAtol, 0)
		})
	}
	requireCovered(t, ref, "", seen)
}

// withTinyChunks makes the CPU pieces (chunkBytes) a few rows wide for the
// rest of the test, so that the tiny models take the chunked paths.
func withTinyChunks(t testing.TB) {
	old := chunkBytes
	chunkBytes = 200
	t.Cleanup(func() { chunkBytes = old })
}

func toInt64(xs []int) []int64 {
	out := make([]int64, len(xs))
	for i, x := range xs {
		out[i] = int64(x)
	}
	return out
}
