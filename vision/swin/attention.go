package swin

import (
	"math"

	"github.com/dp2osr/dp2o/torch"
	"github.com/dp2osr/dp2o/torch/nn"
)

// WindowAttention is W-MSA/SW-MSA: multi-head self-attention inside each
// window with a learned relative position bias (keys qkv, proj,
// relative_position_bias_table).
type WindowAttention struct {
	QKV, Proj *nn.Linear
	// Table is relative_position_bias_table, ((2·Wh−1)·(2·Ww−1), heads).
	Table    *torch.Tensor
	Heads    int64
	Window   [2]int64 // Wh, Ww
	Scale    float64
	index    []int64 // relative_position_index, Wh·Ww × Wh·Ww, row-major
	indexDev *torch.Tensor
}

// NewWindowAttention takes the weights of a window attention over dim
// channels; qkScale 0 means head_dim^-0.5.
func NewWindowAttention(b *nn.Builder, dim, heads int64, window [2]int64, qkvBias bool, qkScale float64) *WindowAttention {
	a := &WindowAttention{
		QKV:    nn.NewLinear(b.Sub("qkv"), dim, 3*dim, qkvBias),
		Proj:   nn.NewLinear(b.Sub("proj"), dim, dim, true),
		Table:  b.Get("relative_position_bias_table", (2*window[0]-1)*(2*window[1]-1), heads),
		Heads:  heads,
		Window: window,
		Scale:  qkScale,
		index:  RelativePositionIndex(window),
	}
	if a.Scale == 0 {
		a.Scale = math.Pow(float64(dim/heads), -0.5)
	}
	n := window[0] * window[1]
	if b.Device().Type == torch.DeviceMeta {
		a.indexDev = torch.Unscope(torch.Empty([]int64{n * n}, torch.Int64, torch.Meta))
	} else {
		a.indexDev = torch.Unscope(torch.Scoped(func() *torch.Tensor {
			return torch.FromSlice(a.index, n*n).ToDevice(b.Device())
		}))
	}
	return a
}

// RelativePositionIndex is the official relative_position_index buffer of a
// Wh×Ww window, flattened: for tokens i = (yi, xi) and j = (yj, xj),
// (yi−yj+Wh−1)·(2·Ww−1) + (xi−xj+Ww−1).
func RelativePositionIndex(window [2]int64) []int64 {
	wh, ww := window[0], window[1]
	n := wh * ww
	idx := make([]int64, n*n)
	for i := int64(0); i < n; i++ {
		yi, xi := i/ww, i%ww
		for j := int64(0); j < n; j++ {
			yj, xj := j/ww, j%ww
			idx[i*n+j] = (yi-yj+wh-1)*(2*ww-1) + (xi - xj + ww - 1)
		}
	}
	return idx
}

// Bias is the relative position bias (heads, N, N) gathered from the table.
func (a *WindowAttention) Bias() *torch.Tensor {
	n := a.Window[0] * a.Window[1]
	return a.Table.IndexSelect(0, a.indexDev).View([]int64{n, n, -1}).Permute([]int64{2, 0, 1}).Contiguous()
}

// Forward attends within windows x (num_windows·B, N, C); mask is the
// (num_windows, N, N) additive shifted-window mask or nil.
func (a *WindowAttention) Forward(x, mask *torch.Tensor) *torch.Tensor {
	s := torch.NewScope()
	defer s.Close()
	bw, n, c := x.Size(0), x.Size(1), x.Size(2)
	qkv := torch.FastLinear(x, a.QKV.Weight, a.QKV.Bias).
		Reshape([]int64{bw, n, 3, a.Heads, c / a.Heads}).Permute([]int64{2, 0, 3, 1, 4})
	q, k, v := qkv.Select(0, 0), qkv.Select(0, 1), qkv.Select(0, 2)
	q = q.MulScalar(a.Scale)
	attn := q.Matmul(k.Transpose(-2, -1))
	attn = attn.Add(a.Bias().Unsqueeze(0))
	if mask != nil {
		nw := mask.Size(0)
		attn = attn.View([]int64{bw / nw, nw, a.Heads, n, n}).Add(mask.Unsqueeze(1).Unsqueeze(0))
		attn = attn.View([]int64{-1, a.Heads, n, n})
	}
	attn = attn.Softmax(-1)
	o := attn.Matmul(v).Transpose(1, 2).Reshape([]int64{bw, n, c})
	return s.Keep(torch.FastLinear(o, a.Proj.Weight, a.Proj.Bias))
}

// Close frees the index buffer.
func (a *WindowAttention) Close() { a.indexDev.Close() }
