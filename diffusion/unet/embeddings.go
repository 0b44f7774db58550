package unet

import (
	"math"

	"github.com/dp2osr/dp2o/torch"
	"github.com/dp2osr/dp2o/torch/nn"
)

// timeEmbedding is diffusers' Timesteps (sinusoidal projection, no
// weights) followed by TimestepEmbedding (linear_1, act, linear_2).
type timeEmbedding struct {
	dim     int64 // projection size (block_out_channels[0])
	flip    bool
	shift   float64
	linear1 *nn.Linear
	linear2 *nn.Linear
	act     actFunc
}

func newTimeEmbedding(b *nn.Builder, c Config, l *blockLayout) *timeEmbedding {
	dim := l.channels[0]
	return &timeEmbedding{
		dim:     dim,
		flip:    c.FlipSinToCos,
		shift:   c.FreqShift,
		linear1: nn.NewLinear(b.Sub("linear_1"), dim, l.timeDim, true),
		linear2: nn.NewLinear(b.Sub("linear_2"), l.timeDim, l.timeDim, true),
		act:     mustActivation(c.ActFn),
	}
}

// batchTimesteps checks timesteps (0-d, or 1-d with 1 or batch entries)
// and broadcasts them to (batch) on dev, as the UNet's forward does.
func batchTimesteps(t *torch.Tensor, batch int64, dev torch.Device) *torch.Tensor {
	switch {
	case t.Dim() == 0:
		t = t.Reshape([]int64{1})
	case t.Dim() != 1:
		torch.Errorf("unet", "timesteps must be 0-d or (batch), got shape %v", t.Shape())
	}
	if n := t.Size(0); n != 1 && n != batch {
		torch.Errorf("unet", "%d timesteps for a batch of %d", n, batch)
	}
	if t.Device() != dev {
		t = t.ToDevice(dev)
	}
	return t.Expand([]int64{batch})
}

// project is get_timestep_embedding: with half = dim/2,
// freq_k = exp(−ln(10000)·k/(half − shift)) in float32, arg = t·freq,
// [sin, cos] (or [cos, sin] with flip_sin_to_cos). t is (B,); the result is
// (B, dim) float32.
func (e *timeEmbedding) project(t *torch.Tensor) *torch.Tensor {
	s := torch.NewScope()
	defer s.Close()
	half := e.dim / 2
	freq := torch.Arange(0, float64(half), 1, torch.Float32, t.Device()).
		MulScalar(-math.Log(10000)).DivScalar(float64(half) - e.shift).Exp()
	arg := t.Unsqueeze(1).Float().Mul(freq.Unsqueeze(0))
	parts := []*torch.Tensor{arg.Sin(), arg.Cos()}
	if e.flip {
		parts[0], parts[1] = parts[1], parts[0]
	}
	return s.Keep(torch.Cat(parts, -1))
}

// forward returns the sinusoidal projection (cast to dtype) and the MLP
// output emb that every resnet takes.
func (e *timeEmbedding) forward(t *torch.Tensor, dtype torch.DType) (proj, emb *torch.Tensor) {
	s := torch.NewScope()
	defer s.Close()
	proj = e.project(t)
	if proj.DType() != dtype {
		proj = proj.To(dtype)
	}
	emb = e.linear2.Forward(e.act(e.linear1.Forward(proj)))
	s.Keep(proj, emb)
	return proj, emb
}
