package transformer

import (
	"fmt"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/dp2osr/dp2o/internal/testutil"
	"github.com/dp2osr/dp2o/torch"
)

// TestBatch runs the fixture inputs as a batch of two (the second with
// other latents and guidance) through the ControlNet and the transformer,
// whole and in small pieces, and checks each item against its own batch-1
// run: the batch dims of the modulation, attention and timestep paths.
func TestBatch(t *testing.T) {
	testutil.NoLeak(t)
	f := loadFixtureFlux(t)
	cn, err := LoadControlNet(testutil.Fixture(t, "flux/controlnet"), torch.Float32, torch.CPU)
	require.NoError(t, err)
	defer cn.Close()
	ref := testutil.Tensors(t, testutil.Fixture(t, "flux/controlnet/io.safetensors"))
	s := torch.NewScope()
	defer s.Close()

	one := input(ref)
	two := input(ref)
	two.HiddenStates = one.HiddenStates.Flip([]int64{1})
	two.Guidance = one.Guidance.MulScalar(2)
	cond := ref["controlnet_cond"]
	run := func(in Input, c *torch.Tensor) *torch.Tensor {
		var out *torch.Tensor
		torch.NoGrad(func() {
			blocks, _, err := cn.Forward(in, c, 1)
			require.NoError(t, err)
			in.ControlNetBlockSamples = blocks
			out, err = f.Forward(in)
			require.NoError(t, err)
		})
		return out
	}
	want := []*torch.Tensor{run(one, cond), run(two, cond)}

	batch := input(ref)
	batch.HiddenStates = torch.Cat([]*torch.Tensor{one.HiddenStates, two.HiddenStates}, 0)
	batch.EncoderHiddenStates = torch.Cat([]*torch.Tensor{one.EncoderHiddenStates, one.EncoderHiddenStates}, 0)
	batch.PooledProjections = torch.Cat([]*torch.Tensor{one.PooledProjections, one.PooledProjections}, 0)
	batch.Guidance = torch.Cat([]*torch.Tensor{one.Guidance, two.Guidance}, 0)
	if one.Timestep.Numel() > 1 {
		// A fixture batch of several rows has one timestep per row; a
		// single one (0-d or (1)) is broadcast over the batch.
		batch.Timestep = torch.Cat([]*torch.Tensor{one.Timestep, two.Timestep}, 0)
	}
	bcond := torch.Cat([]*torch.Tensor{cond, cond}, 0)
	for _, pieces := range []bool{false, true} {
		if pieces {
			withTinyChunks(t)
		}
		got := run(batch, bcond)
		for i := range want {
			n := want[i].Size(0)
			testutil.AssertClose(t, fmt.Sprintf("batch item %d (pieces %v)", i, pieces), got.Narrow(0, int64(i)*n, n), want[i], transformerAtol, 0)
		}
	}
}
