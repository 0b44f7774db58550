package unet

import (
	"fmt"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/dp2osr/dp2o/internal/testutil"
	"github.com/dp2osr/dp2o/torch"
)

func TestUNetFixtures(t *testing.T) {
	for _, tc := range []struct {
		name, file string
		ctrl       bool
	}{
		{"main", "io_main.safetensors", false},
		{"odd", "io_odd.safetensors", false},
		{"controlnet", "io_controlnet.safetensors", true},
	} {
		for _, attn := range attentionPaths {
			t.Run(tc.name+attn.suffix, func(t *testing.T) {
				testutil.NoLeak(t)
				dev := testutil.Device(t)
				u, err := Load(testutil.Fixture(t, "sd2/unet"), torch.Float32, dev)
				require.NoError(t, err)
				defer u.Close()
				attn.use(u.opts)
				io := testutil.Tensors(t, testutil.Fixture(t, "sd2/unet/"+tc.file))

				var ctrl *Residuals
				if tc.ctrl {
					ctrl = &Residuals{
						Down: indexed(t, io, "down_block_additional_residuals.", dev),
						Mid:  onDev(t, io["mid_block_additional_residual"], dev),
					}
					require.Len(t, ctrl.Down, u.NumSkips())
				}
				rec := newTapRecorder(t)
				u.Tap = rec.tap
				var out *torch.Tensor
				torch.NoGrad(func() {
					out, err = u.TryForward(onDev(t, io["sample"], dev), onDev(t, io["timesteps"], dev),
						onDev(t, io["encoder_hidden_states"], dev), ctrl)
				})
				require.NoError(t, err)
				defer out.Close()

				seen := rec.compare(t, io, "", interAtol)
				testutil.AssertClose(t, "out_sample", out, io["out_sample"], outAtol, rtol)
				seen["out_sample"] = true
				requireCovered(t, io, seen, hasPrefix("sample", "timesteps", "encoder_hidden_states",
					"down_block_additional_residuals.", "mid_block_additional_residual"))
			})
		}
	}
}

// TestUNetTimestepForms checks that a 0-d, a (1) and a (B) timestep give
// the same output, for integer and float timesteps.
func TestUNetTimestepForms(t *testing.T) {
	testutil.NoLeak(t)
	dev := testutil.Device(t)
	u, err := Load(testutil.Fixture(t, "sd2/unet"), torch.Float32, dev)
	require.NoError(t, err)
	defer u.Close()
	io := testutil.Tensors(t, testutil.Fixture(t, "sd2/unet/io_main.safetensors"))
	s := torch.NewScope()
	defer s.Close()
	// Every row at the fixture's first timestep.
	sample := onDev(t, io["sample"], dev)
	text := onDev(t, io["encoder_hidden_states"], dev)
	v := io["timesteps"].Int64s()[0]
	batch := int(sample.Shape()[0])
	perRow := make([]int64, batch)
	perRowF := make([]float32, batch)
	for i := range perRow {
		perRow[i], perRowF[i] = v, float32(v)
	}
	var outs []*torch.Tensor
	torch.NoGrad(func() {
		for _, ts := range []*torch.Tensor{
			torch.ScalarOf(float64(v), torch.Int64, torch.CPU),
			torch.FromSlice([]int64{v}),
			torch.FromSlice(perRow),
			torch.FromSlice(perRowF),
		} {
			outs = append(outs, u.Forward(sample, ts, text, nil))
		}
	})
	for i := 1; i < len(outs); i++ {
		testutil.AssertEqual(t, "timestep form", outs[i], outs[0])
	}
}

// badShape is a zero tensor one row taller than x.
func badShape(x *torch.Tensor, dev torch.Device) *torch.Tensor {
	sh := x.Shape()
	sh[2]++
	return torch.Zeros(sh, torch.Float32, dev)
}

func TestUNetBadInput(t *testing.T) {
	testutil.NoLeak(t)
	dev := testutil.Device(t)
	u, err := Load(testutil.Fixture(t, "sd2/unet"), torch.Float32, dev)
	require.NoError(t, err)
	defer u.Close()
	s := torch.NewScope()
	defer s.Close()
	// Well-formed inputs of the fixture's shapes (residual shapes from the
	// ControlNet case), then each made wrong in one way.
	io := testutil.Tensors(t, testutil.Fixture(t, "sd2/unet/io_controlnet.safetensors"))
	ss, es := io["sample"].Shape(), io["encoder_hidden_states"].Shape()
	b, c, h, w := ss[0], ss[1], ss[2], ss[3]
	sample := torch.Zeros(ss, torch.Float32, dev)
	text := torch.Zeros(es, torch.Float32, dev)
	ts := torch.Zeros([]int64{b}, torch.Int64, torch.CPU)
	okRes := &Residuals{}
	for i := 0; ; i++ {
		r, ok := io[fmt.Sprintf("down_block_additional_residuals.%d", i)]
		if !ok {
			break
		}
		okRes.Down = append(okRes.Down, torch.Zeros(r.Shape(), torch.Float32, dev))
	}
	n := len(okRes.Down)
	require.Positive(t, n)
	okRes.Mid = torch.Zeros(io["mid_block_additional_residual"].Shape(), torch.Float32, dev)
	wrongDim := es[2] + 1

	for _, tc := range []struct {
		name             string
		sample, ts, text *torch.Tensor
		ctrl             *Residuals
		msg              string
	}{
		{"wrong channels", torch.Zeros([]int64{b, c + 1, h, w}, torch.Float32, dev), ts, text, nil, "sample must be"},
		{"3-d sample", torch.Zeros([]int64{b * c, h, w}, torch.Float32, dev), ts, text, nil, "sample must be"},
		{"text dim", sample, ts, torch.Zeros([]int64{es[0], es[1], wrongDim}, torch.Float32, dev), nil, fmt.Sprintf("encoder_hidden_states has dim %d", wrongDim)},
		{"text batch", sample, ts, torch.Zeros([]int64{es[0] + 1, es[1], es[2]}, torch.Float32, dev), nil, "encoder_hidden_states must be"},
		{"timesteps", sample, torch.Zeros([]int64{b + 1}, torch.Int64, torch.CPU), text, nil, fmt.Sprintf("%d timesteps for a batch of %d", b+1, b)},
		{"timesteps 2-d", sample, torch.Zeros([]int64{b, 1}, torch.Int64, torch.CPU), text, nil, "timesteps must be"},
		{"dtype", sample.To(torch.Float64), ts, text, nil, ""},
		{"residual count", sample, ts, text, &Residuals{Down: okRes.Down[:n-1], Mid: okRes.Mid}, fmt.Sprintf("%d ControlNet down residuals for %d", n-1, n)},
		{"residual shape", sample, ts, text, &Residuals{Down: append(append([]*torch.Tensor{}, okRes.Down[:n-1]...), badShape(okRes.Down[n-1], dev)), Mid: okRes.Mid}, fmt.Sprintf("down residual %d has shape", n-1)},
		{"mid shape", sample, ts, text, &Residuals{Down: okRes.Down, Mid: okRes.Down[0]}, "mid residual"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := torch.LiveTensors()
			out, err := u.TryForward(tc.sample, tc.ts, tc.text, tc.ctrl)
			require.Error(t, err)
			require.Nil(t, out)
			require.Contains(t, err.Error(), tc.msg)
			require.Equal(t, before, torch.LiveTensors(), "a failed forward left tensors behind")
		})
	}
	// The well-formed call works.
	out, err := u.TryForward(sample, ts, text, okRes)
	require.NoError(t, err)
	out.Close()
}

func TestUNetLoadErrors(t *testing.T) {
	testutil.NoLeak(t)
	_, err := Load(t.TempDir(), torch.Float32, torch.CPU)
	require.ErrorContains(t, err, "config.json")

	// The ControlNet's weights are not a UNet's: missing and unexpected keys.
	cfg, err := LoadConfig(testutil.Fixture(t, "sd2/unet/config.json"))
	require.NoError(t, err)
	_, err = LoadFile(cfg, testutil.Fixture(t, "sd2/controlnet/model.safetensors"), torch.Float32, torch.CPU)
	require.Error(t, err)
	require.Contains(t, err.Error(), "missing keys")
	require.Contains(t, err.Error(), "up_blocks.0.resnets.0.conv1.weight")
	require.Contains(t, err.Error(), "unexpected keys")
	require.Contains(t, err.Error(), "controlnet_cond_embedding.conv_in.weight")
}
