package nn

import "github.com/dp2osr/dp2o/torch"

// Linear is y = x·Wᵀ + b (PyTorch's nn.Linear; weight is (out, in)).
type Linear struct {
	Weight, Bias *torch.Tensor
}

// NewLinear takes weight (out, in) and, when bias is true, bias (out).
func NewLinear(b *Builder, in, out int64, bias bool) *Linear {
	l := &Linear{Weight: b.Get("weight", out, in)}
	if bias {
		l.Bias = b.Get("bias", out)
	}
	return l
}

// Forward applies the layer to the last dim of x.
func (l *Linear) Forward(x *torch.Tensor) *torch.Tensor { return torch.Linear(x, l.Weight, l.Bias) }

// Conv2d is PyTorch's nn.Conv2d.
type Conv2d struct {
	Weight, Bias              *torch.Tensor
	Stride, Padding, Dilation []int64
	Groups                    int64
}

// Conv2dConfig holds a convolution's hyper-parameters; zero values mean
// stride 1, padding 0, dilation 1, groups 1, with bias.
type Conv2dConfig struct {
	Stride, Padding, Dilation int64
	Groups                    int64
	NoBias                    bool
}

// NewConv2d takes weight (out, in/groups, k, k) and bias (out).
func NewConv2d(b *Builder, in, out, k int64, cfg Conv2dConfig) *Conv2d {
	if cfg.Stride == 0 {
		cfg.Stride = 1
	}
	if cfg.Dilation == 0 {
		cfg.Dilation = 1
	}
	if cfg.Groups == 0 {
		cfg.Groups = 1
	}
	c := &Conv2d{
		Weight:   b.Get("weight", out, in/cfg.Groups, k, k),
		Stride:   []int64{cfg.Stride, cfg.Stride},
		Padding:  []int64{cfg.Padding, cfg.Padding},
		Dilation: []int64{cfg.Dilation, cfg.Dilation},
		Groups:   cfg.Groups,
	}
	if !cfg.NoBias {
		c.Bias = b.Get("bias", out)
	}
	return c
}

// Forward convolves a (N, C, H, W) input.
func (c *Conv2d) Forward(x *torch.Tensor) *torch.Tensor {
	return torch.Conv2d(x, c.Weight, c.Bias, c.Stride, c.Padding, c.Dilation, c.Groups)
}

// GroupNorm is PyTorch's nn.GroupNorm (affine).
type GroupNorm struct {
	Weight, Bias *torch.Tensor
	Groups       int64
	Eps          float64
}

// NewGroupNorm takes weight and bias (channels).
func NewGroupNorm(b *Builder, groups, channels int64, eps float64) *GroupNorm {
	return &GroupNorm{Weight: b.Get("weight", channels), Bias: b.Get("bias", channels), Groups: groups, Eps: eps}
}

// Forward normalises a (N, C, …) input.
func (g *GroupNorm) Forward(x *torch.Tensor) *torch.Tensor {
	return torch.GroupNorm(x, g.Groups, g.Weight, g.Bias, g.Eps)
}

// LayerNorm is PyTorch's nn.LayerNorm over the last dim.
type LayerNorm struct {
	Weight, Bias *torch.Tensor
	Dim          int64
	Eps          float64
}

// NewLayerNorm takes weight and bias (dim); affine=false takes neither.
func NewLayerNorm(b *Builder, dim int64, eps float64, affine bool) *LayerNorm {
	l := &LayerNorm{Dim: dim, Eps: eps}
	if affine {
		l.Weight = b.Get("weight", dim)
		l.Bias = b.Get("bias", dim)
	}
	return l
}

// Forward normalises the last dim of x.
func (l *LayerNorm) Forward(x *torch.Tensor) *torch.Tensor {
	return torch.LayerNorm(x, []int64{l.Dim}, l.Weight, l.Bias, l.Eps)
}

// RMSNorm is diffusers' RMSNorm over the last dim.
type RMSNorm struct {
	Weight *torch.Tensor
	Eps    float64
}

// NewRMSNorm takes weight (dim) when affine.
func NewRMSNorm(b *Builder, dim int64, eps float64, affine bool) *RMSNorm {
	r := &RMSNorm{Eps: eps}
	if affine {
		r.Weight = b.Get("weight", dim)
	}
	return r
}

// Forward normalises the last dim of x.
func (r *RMSNorm) Forward(x *torch.Tensor) *torch.Tensor { return torch.RMSNorm(x, r.Weight, r.Eps) }

// Embedding is PyTorch's nn.Embedding.
type Embedding struct {
	Weight *torch.Tensor
}

// NewEmbedding takes weight (n, dim).
func NewEmbedding(b *Builder, n, dim int64) *Embedding {
	return &Embedding{Weight: b.Get("weight", n, dim)}
}

// Forward looks up int64 ids.
func (e *Embedding) Forward(ids *torch.Tensor) *torch.Tensor { return torch.Embedding(e.Weight, ids) }
