package transformer

import (
	"fmt"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/dp2osr/dp2o/internal/testutil"
	"github.com/dp2osr/dp2o/torch"
	"github.com/dp2osr/dp2o/torch/nn"
)

// TestPrunedPaths: without a tap the models skip outputs nobody reads (the
// text stream of a last double block with no single block after it, the
// text tokens of a last single block). Layouts the fixtures do not have —
// a transformer without single blocks, a ControlNet with single blocks —
// give the same results both ways.
func TestPrunedPaths(t *testing.T) {
	testutil.NoLeak(t)
	ref := testutil.Tensors(t, testutil.Fixture(t, "flux/transformer/io.safetensors"))
	cref := testutil.Tensors(t, testutil.Fixture(t, "flux/controlnet/io.safetensors"))
	both := func(t *testing.T, run func() []*torch.Tensor, setTap func(bool)) {
		setTap(true)
		full := torch.ScopedList(run)
		setTap(false)
		pruned := torch.ScopedList(run)
		require.Len(t, pruned, len(full))
		require.NotEmpty(t, full)
		old := chunkBytes
		chunkBytes = 200
		pieces := torch.ScopedList(run)
		chunkBytes = old
		require.Len(t, pieces, len(full))
		for i := range full {
			testutil.AssertClose(t, fmt.Sprintf("output %d", i), pruned[i], full[i], transformerAtol, 0)
			testutil.AssertClose(t, fmt.Sprintf("output %d in small pieces", i), pieces[i], full[i], transformerAtol, 0)
			full[i].Close()
			pruned[i].Close()
			pieces[i].Close()
		}
	}

	t.Run("transformer without single blocks", func(t *testing.T) {
		cfg, err := LoadConfig(testutil.Fixture(t, "flux/transformer/config.json"))
		require.NoError(t, err)
		cfg.NumSingleLayers = 0
		src, err := nn.OpenSafetensors(testutil.Fixture(t, "flux/transformer/"+WeightsFile))
		require.NoError(t, err)
		defer src.Close()
		f, p, err := nn.Build(src, torch.Float32, torch.CPU, func(b *nn.Builder) (*Flux, error) { return New(b, cfg) }, nn.AllowUnused())
		require.NoError(t, err)
		defer p.Close()
		rec := newTapRecorder(t)
		both(t, func() []*torch.Tensor {
			var out *torch.Tensor
			torch.NoGrad(func() { out, err = f.Forward(input(ref)) })
			require.NoError(t, err)
			return []*torch.Tensor{out}
		}, func(on bool) {
			f.Tap = nil
			if on {
				f.Tap = rec.tap
			}
		})
	})

	t.Run("controlnet with single blocks", func(t *testing.T) {
		f := loadFixtureFlux(t)
		cn, err := ControlNetFromTransformer(f, ControlNetOptions{NumLayers: f.NumLayers(), NumSingleLayers: f.NumSingleLayers()})
		require.NoError(t, err)
		defer cn.Close()
		// Non-zero output layers, so that the samples carry the blocks' values.
		gen, err := torch.NewGenerator(torch.CPU, 1)
		require.NoError(t, err)
		torch.NoGrad(func() {
			for _, q := range cn.Parameters() {
				if strings.HasPrefix(q.Name, "controlnet_") {
					q.Tensor.Normal_(0, 0.1, gen)
				}
			}
		})
		rec := newTapRecorder(t)
		both(t, func() []*torch.Tensor {
			var b, s []*torch.Tensor
			torch.NoGrad(func() { b, s, err = cn.Forward(input(ref), cref["controlnet_cond"], 1) })
			require.NoError(t, err)
			require.Len(t, s, cn.Config.NumSingleLayers)
			// The transformer with both kinds of residuals.
			in := input(ref)
			in.ControlNetBlockSamples, in.ControlNetSingleBlockSamples = b, s
			var out *torch.Tensor
			torch.NoGrad(func() { out, err = f.Forward(in) })
			require.NoError(t, err)
			return append(append(b, s...), out)
		}, func(on bool) {
			cn.Tap, f.Tap = nil, nil
			if on {
				cn.Tap, f.Tap = rec.tap, rec.tap
			}
		})
	})
}
