package swin

import (
	"fmt"

	"github.com/dp2osr/dp2o/torch"
	"github.com/dp2osr/dp2o/torch/nn"
)

// BlockConfig describes one SwinTransformerBlock.
type BlockConfig struct {
	Dim, Heads int64
	// Resolution is the token grid (H, W) the block runs on.
	Resolution [2]int64
	// Window and Shift are the requested window and shift sizes; as in the
	// official block, a grid no larger than the window makes the window the
	// grid and the shift 0.
	Window, Shift int64
	// MLPHidden is the hidden width of the MLP (int(dim·mlp_ratio)).
	MLPHidden int64
	QKVBias   bool
	QKScale   float64
	Eps       float64
}

// Block is SwinTransformerBlock: x + W-MSA(LN(x)) with the cyclic shift, then
// x + MLP(LN(x)) (exact GELU). Keys norm1, attn.*, norm2, mlp.fc1, mlp.fc2.
type Block struct {
	Norm1, Norm2 *nn.LayerNorm
	Attn         *WindowAttention
	FC1, FC2     *nn.Linear
	H, W         int64
	Window       int64
	Shift        int64
	// Mask is the (num_windows, N, N) shifted-window mask (0 or −100), nil
	// without a shift.
	Mask *torch.Tensor
}

// NewBlock takes a block's weights.
func NewBlock(b *nn.Builder, c BlockConfig) (*Block, error) {
	h, w := c.Resolution[0], c.Resolution[1]
	win, shift := c.Window, c.Shift
	if min(h, w) <= win {
		win, shift = min(h, w), 0
	}
	if shift < 0 || shift >= win {
		return nil, fmt.Errorf("swin block: shift %d must be in [0, window %d)", shift, win)
	}
	if h%win != 0 || w%win != 0 {
		return nil, fmt.Errorf("swin block: a %d×%d grid does not split into %d×%d windows", h, w, win, win)
	}
	if c.Heads <= 0 || c.Dim%c.Heads != 0 {
		return nil, fmt.Errorf("swin block: %d heads for %d channels", c.Heads, c.Dim)
	}
	blk := &Block{
		Norm1:  nn.NewLayerNorm(b.Sub("norm1"), c.Dim, c.Eps, true),
		Attn:   NewWindowAttention(b.Sub("attn"), c.Dim, c.Heads, [2]int64{win, win}, c.QKVBias, c.QKScale),
		Norm2:  nn.NewLayerNorm(b.Sub("norm2"), c.Dim, c.Eps, true),
		FC1:    nn.NewLinear(b.Sub("mlp").Sub("fc1"), c.Dim, c.MLPHidden, true),
		FC2:    nn.NewLinear(b.Sub("mlp").Sub("fc2"), c.MLPHidden, c.Dim, true),
		H:      h,
		W:      w,
		Window: win,
		Shift:  shift,
	}
	if shift > 0 {
		n := win * win
		vals := ShiftMask(h, w, win, shift)
		if b.Device().Type == torch.DeviceMeta {
			blk.Mask = torch.Empty([]int64{int64(len(vals)) / (n * n), n, n}, b.DType(), torch.Meta)
		} else {
			blk.Mask = torch.Scoped(func() *torch.Tensor {
				return torch.FromSlice(vals, int64(len(vals))/(n*n), n, n).To(b.DType()).ToDevice(b.Device())
			})
		}
		torch.Unscope(blk.Mask)
	}
	return blk, nil
}

// ShiftMask is the official attn_mask buffer of a shifted block, flattened
// (num_windows, N, N): the grid is cut at H−window and H−shift on each axis
// into 9 regions; two tokens of a window from different regions get −100.
func ShiftMask(h, w, win, shift int64) []float32 {
	region := func(p, size int64) int64 {
		switch {
		case p < size-win:
			return 0
		case p < size-shift:
			return 1
		}
		return 2
	}
	n := win * win
	nw := (h / win) * (w / win)
	labels := make([]int64, nw*n) // window_partition of the region map
	for wy := int64(0); wy < h/win; wy++ {
		for wx := int64(0); wx < w/win; wx++ {
			for t := int64(0); t < n; t++ {
				y, x := wy*win+t/win, wx*win+t%win
				labels[(wy*(w/win)+wx)*n+t] = region(y, h)*3 + region(x, w)
			}
		}
	}
	out := make([]float32, nw*n*n)
	for k := int64(0); k < nw; k++ {
		l := labels[k*n : (k+1)*n]
		for i := int64(0); i < n; i++ {
			for j := int64(0); j < n; j++ {
				if l[j] != l[i] {
					out[(k*n+i)*n+j] = -100
				}
			}
		}
	}
	return out
}

// partition splits (B, H, W, C) into windows (num_windows·B, N, C).
func (blk *Block) partition(x *torch.Tensor) *torch.Tensor {
	b, c, ws := x.Size(0), x.Size(3), blk.Window
	return x.View([]int64{b, blk.H / ws, ws, blk.W / ws, ws, c}).Permute([]int64{0, 1, 3, 2, 4, 5}).
		Contiguous().View([]int64{-1, ws * ws, c})
}

// reverse merges windows (num_windows·B, ws, ws, C) back into (B, H, W, C).
func (blk *Block) reverse(x *torch.Tensor) *torch.Tensor {
	ws, c := blk.Window, x.Size(3)
	b := x.Size(0) / ((blk.H / ws) * (blk.W / ws))
	return x.View([]int64{b, blk.H / ws, blk.W / ws, ws, ws, c}).Permute([]int64{0, 1, 3, 2, 4, 5}).
		Contiguous().View([]int64{b, blk.H, blk.W, c})
}

// Forward runs the block on tokens x (B, H·W, C).
func (blk *Block) Forward(x *torch.Tensor) *torch.Tensor {
	s := torch.NewScope()
	defer s.Close()
	b, l, c := x.Size(0), x.Size(1), x.Size(2)
	if l != blk.H*blk.W {
		torch.Errorf("swin block", "input has %d tokens, the block's grid is %d×%d", l, blk.H, blk.W)
	}
	y := blk.Norm1.Forward(x).View([]int64{b, blk.H, blk.W, c})
	if blk.Shift > 0 {
		y = y.Roll([]int64{-blk.Shift, -blk.Shift}, []int64{1, 2})
	}
	a := blk.Attn.Forward(blk.partition(y), blk.Mask)
	y = blk.reverse(a.View([]int64{-1, blk.Window, blk.Window, c}))
	if blk.Shift > 0 {
		y = y.Roll([]int64{blk.Shift, blk.Shift}, []int64{1, 2})
	}
	x = x.Add(y.View([]int64{b, l, c}))
	h := torch.FastLinear(blk.Norm2.Forward(x), blk.FC1.Weight, blk.FC1.Bias).Gelu()
	return s.Keep(x.Add(torch.FastLinear(h, blk.FC2.Weight, blk.FC2.Bias)))
}

// Close frees the block's buffers (the mask and the position index).
func (blk *Block) Close() {
	blk.Attn.Close()
	if blk.Mask != nil {
		blk.Mask.Close()
	}
}
