package transformer

import (
	"math"

	"github.com/dp2osr/dp2o/torch"
	"github.com/dp2osr/dp2o/torch/nn"
)

// timeProjChannels is the width of the sinusoidal time embedding
// (Timesteps(num_channels=256, flip_sin_to_cos=True, downscale_freq_shift=0)).
const timeProjChannels = 256

// timeProj is diffusers' get_timestep_embedding for v (N) with 256
// channels, cos half first: f_i = exp(−ln(10000)·i / 128) in float32, the
// angles v·f_i in float32.
func timeProj(v *torch.Tensor) *torch.Tensor {
	s := torch.NewScope()
	defer s.Close()
	half := int64(timeProjChannels / 2)
	exponent := torch.Arange(0, float64(half), 1, torch.Float32, v.Device()).MulScalar(-math.Log(10000)).DivScalar(float64(half))
	freqs := exponent.Exp()
	a := v.To(torch.Float32).Unsqueeze(1).Mul(freqs.Unsqueeze(0))
	return s.Keep(torch.Cat([]*torch.Tensor{a.Cos(), a.Sin()}, -1))
}

// mlpEmbedding is diffusers' TimestepEmbedding / PixArtAlphaTextProjection
// with SiLU: linear_2(silu(linear_1(x))).
type mlpEmbedding struct {
	l1, l2 *nn.Linear
}

func newMLPEmbedding(b *nn.Builder, in, dim int64) *mlpEmbedding {
	return &mlpEmbedding{l1: nn.NewLinear(b.Sub("linear_1"), in, dim, true), l2: nn.NewLinear(b.Sub("linear_2"), dim, dim, true)}
}

func (m *mlpEmbedding) forward(x *torch.Tensor) *torch.Tensor {
	return torch.Scoped(func() *torch.Tensor { return linear(m.l2, linear(m.l1, x).Silu()) })
}

// timeTextEmbed is CombinedTimestepGuidanceTextProjEmbeddings (guidance
// non-nil, FLUX.1-dev) or CombinedTimestepTextProjEmbeddings.
type timeTextEmbed struct {
	timestep, guidance, text *mlpEmbedding
}

func newTimeTextEmbed(b *nn.Builder, c Config) *timeTextEmbed {
	d := c.InnerDim()
	e := &timeTextEmbed{timestep: newMLPEmbedding(b.Sub("timestep_embedder"), timeProjChannels, d)}
	if c.GuidanceEmbeds {
		e.guidance = newMLPEmbedding(b.Sub("guidance_embedder"), timeProjChannels, d)
	}
	e.text = newMLPEmbedding(b.Sub("text_embedder"), int64(c.PooledProjectionDim), d)
	return e
}

// forward takes the timesteps and guidance already ×1000 (N) and the pooled
// text (N, pooled_projection_dim).
func (e *timeTextEmbed) forward(t, g, pooled *torch.Tensor, tap func(string, *torch.Tensor)) *torch.Tensor {
	s := torch.NewScope()
	defer s.Close()
	dt := pooled.DType()
	tp := timeProj(t)
	tap("time_proj.timestep", tp)
	temb := e.timestep.forward(tp.To(dt))
	tap("timestep_embedder", temb)
	if e.guidance != nil {
		gp := timeProj(g)
		tap("time_proj.guidance", gp)
		gemb := e.guidance.forward(gp.To(dt))
		tap("guidance_embedder", gemb)
		temb = temb.Add(gemb)
	}
	txt := e.text.forward(pooled)
	tap("text_embedder", txt)
	return s.Keep(temb.Add(txt))
}
