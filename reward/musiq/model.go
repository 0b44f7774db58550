// Package musiq is pyiqa's MUSIQ (multi-scale image quality transformer)
// with the KonIQ-10k head: no-reference, higher-is-better. Importing the
// package registers "musiq" with reward.Open.
//
// Preprocessing happens inside the network as in pyiqa: the image is mapped
// to [-1, 1], resized (bicubic, no antialias, aspect ratio kept, sizes
// rounded half to even) so that its longer side is 224 and 384, and cut with
// the original resolution into 32×32 patches (TensorFlow SAME padding) with
// hashed spatial positions, scale ids and a padding mask.
package musiq

import (
	"fmt"
	"math"

	"github.com/dp2osr/dp2o/torch"
	"github.com/dp2osr/dp2o/torch/nn"
)

// Config is a MUSIQ configuration (pyiqa's constructor arguments).
type Config struct {
	PatchSize, PatchStride   int64
	HashGridSize             int64
	LongerSideLengths        []int64
	UseOriginalRes           bool  // max_seq_len_from_original_res is not None
	MaxSeqLenFromOriginalRes int64 // -1: every patch of the original resolution
	Hidden, MLPDim           int64
	Heads, Layers            int64
	NumScales                int64
	NumClass                 int64 // 1 (KonIQ, SPAQ, PaQ-2-PiQ heads; dist_to_mos is the identity)
}

// KonIQ is pyiqa's "musiq" (musiq_koniq_ckpt).
var KonIQ = Config{
	PatchSize: 32, PatchStride: 32, HashGridSize: 10, LongerSideLengths: []int64{224, 384},
	UseOriginalRes: true, MaxSeqLenFromOriginalRes: -1,
	Hidden: 384, MLPDim: 1152, Heads: 6, Layers: 14, NumScales: 3, NumClass: 1,
}

const resnetTokenDim = 64

// stdConv is pyiqa's StdConv (weight standardisation, TF SAME padding, no
// bias). The standardised weight is computed once: the same ops pyiqa
// repeats at every call, so the same values.
type stdConv struct {
	w         *torch.Tensor
	k, stride int64
}

func newStdConv(b *nn.Builder, in, out, k, stride int64) *stdConv {
	w := b.Get("weight", out, in, k, k)
	c := &stdConv{k: k, stride: stride}
	if w.Device().Type == torch.DeviceMeta {
		c.w = torch.Unscope(w.Alias())
		return c
	}
	c.w = torch.Unscope(torch.Scoped(func() *torch.Tensor {
		dims := []int64{1, 2, 3}
		ws := w.Sub(w.MeanDims(dims, true))
		return ws.Div(ws.Std(dims, true, true).AddScalar(1e-5))
	}))
	return c
}

func (c *stdConv) forward(x *torch.Tensor) *torch.Tensor {
	t, b := samePad(x.Size(2), c.k, c.stride)
	l, r := samePad(x.Size(3), c.k, c.stride)
	if t+b+l+r > 0 {
		x = x.Pad([]int64{l, r, t, b}, torch.PadConstant, 0)
	}
	return torch.Conv2d(x, c.w, nil, []int64{c.stride, c.stride}, []int64{0, 0}, []int64{1, 1}, 1)
}

// bottleneck is pyiqa's MUSIQ Bottleneck (GroupNorm 32, eps 1e-4).
type bottleneck struct {
	conv1, conv2, conv3, proj *stdConv
	gn1, gn2, gn3, gnProj     *nn.GroupNorm
}

func newBottleneck(b *nn.Builder, in, out int64) *bottleneck {
	w := in
	bb := &bottleneck{
		conv1: newStdConv(b.Sub("conv1"), in, w, 1, 1), gn1: nn.NewGroupNorm(b.Sub("gn1"), 32, w, 1e-4),
		conv2: newStdConv(b.Sub("conv2"), w, w, 3, 1), gn2: nn.NewGroupNorm(b.Sub("gn2"), 32, w, 1e-4),
		conv3: newStdConv(b.Sub("conv3"), w, out, 1, 1), gn3: nn.NewGroupNorm(b.Sub("gn3"), 32, out, 1e-4),
	}
	if in != out {
		bb.proj = newStdConv(b.Sub("conv_proj"), in, out, 1, 1)
		bb.gnProj = nn.NewGroupNorm(b.Sub("gn_proj"), 32, out, 1e-4)
	}
	return bb
}

// forward frees each branch's intermediates as soon as the branch is done:
// on every patch at once they are tens of MiB each.
func (b *bottleneck) forward(x *torch.Tensor) *torch.Tensor {
	s := torch.NewScope()
	defer s.Close()
	id := x
	if b.proj != nil {
		id = torch.Scoped(func() *torch.Tensor { return b.gnProj.Forward(b.proj.forward(x)) })
	}
	h := torch.Scoped(func() *torch.Tensor {
		// ReLUs in place: each runs on a fresh GroupNorm output.
		h := b.gn1.Forward(b.conv1.forward(x))
		h.Relu_()
		h = b.gn2.Forward(b.conv2.forward(h))
		h.Relu_()
		return b.gn3.Forward(b.conv3.forward(h))
	})
	h = h.Add(id)
	h.Relu_()
	return s.Keep(h)
}

// block is a pre-LN transformer block with MUSIQ's masked attention. The
// query, key and value projections are one (d → 3d) linear layer, their
// weights stacked when the model is built: one matrix product instead of
// three.
type block struct {
	norm1, norm2 *nn.LayerNorm
	qkv, out     *nn.Linear // qkv is owned by the model
	fc1, fc2     *nn.Linear
	heads        int64
}

// Model is MUSIQ in eval mode.
type Model struct {
	cfg         Config
	convRoot    *stdConv
	gnRoot      *nn.GroupNorm
	block1      *bottleneck
	embedding   *nn.Linear
	posEmb      *torch.Tensor // (1, G², Hidden)
	scaleEmb    *torch.Tensor // (NumScales, Hidden)
	cls         *torch.Tensor // (1, 1, Hidden)
	blocks      []*block
	encoderNorm *nn.LayerNorm
	head        *nn.Linear
}

// Tap receives named intermediates (the fixture's io.json names without
// the case prefix); t is valid only during the call.
type Tap func(name string, t *torch.Tensor)

// New builds MUSIQ from b with pyiqa's state-dict keys.
func New(b *nn.Builder, cfg Config) (*Model, error) {
	if cfg.NumClass != 1 || cfg.Heads <= 0 || cfg.Hidden%cfg.Heads != 0 || cfg.PatchSize%4 != 0 {
		return nil, fmt.Errorf("musiq: unsupported config %+v", cfg)
	}
	tp := cfg.PatchSize / 4
	m := &Model{
		cfg:       cfg,
		convRoot:  newStdConv(b.Sub("conv_root"), 3, resnetTokenDim, 7, 2),
		gnRoot:    nn.NewGroupNorm(b.Sub("gn_root"), 32, resnetTokenDim, 1e-6),
		block1:    newBottleneck(b.Sub("block1"), resnetTokenDim, 4*resnetTokenDim),
		embedding: chwEmbedding(nn.NewLinear(b.Sub("embedding"), 4*resnetTokenDim*tp*tp, cfg.Hidden, true), 4*resnetTokenDim, tp*tp),
		head:      nn.NewLinear(b.Sub("head"), cfg.Hidden, cfg.NumClass, true),
	}
	te := b.Sub("transformer_encoder")
	m.posEmb = te.Get("posembed_input.position_emb", 1, cfg.HashGridSize*cfg.HashGridSize, cfg.Hidden)
	m.scaleEmb = te.Get("scaleembed_input.scale_emb", cfg.NumScales, cfg.Hidden)
	m.cls = te.Get("cls", 1, 1, cfg.Hidden)
	m.encoderNorm = nn.NewLayerNorm(te.Sub("encoder_norm"), cfg.Hidden, 1e-6, true)
	for i := int64(0); i < cfg.Layers; i++ {
		bb := te.Sub(fmt.Sprintf("transformer.encoderblock_%d", i))
		at := bb.Sub("attention")
		d := cfg.Hidden
		m.blocks = append(m.blocks, &block{
			norm1: nn.NewLayerNorm(bb.Sub("norm1"), d, 1e-6, true), norm2: nn.NewLayerNorm(bb.Sub("norm2"), d, 1e-6, true),
			qkv: stack(nn.NewLinear(at.Sub("query"), d, d, true), nn.NewLinear(at.Sub("key"), d, d, true),
				nn.NewLinear(at.Sub("value"), d, d, true)),
			out: nn.NewLinear(at.Sub("out"), d, d, true),
			fc1: nn.NewLinear(bb.Sub("mlp.fc1"), d, cfg.MLPDim, true), fc2: nn.NewLinear(bb.Sub("mlp.fc2"), cfg.MLPDim, d, true),
			heads: cfg.Heads,
		})
	}
	return m, nil
}

// Close frees what the model made from the loaded weights: the
// standardised convolution weights, the reordered embedding and the stacked
// q/k/v layers (the rest belongs to the builder's Params).
func (m *Model) Close() {
	for _, c := range []*stdConv{m.convRoot, m.block1.conv1, m.block1.conv2, m.block1.conv3, m.block1.proj} {
		if c != nil {
			c.w.Close()
		}
	}
	for _, l := range append([]*nn.Linear{m.embedding}, m.qkvs()...) {
		l.Weight.Close()
		l.Bias.Close()
	}
}

func (m *Model) qkvs() []*nn.Linear {
	out := make([]*nn.Linear, len(m.blocks))
	for i, b := range m.blocks {
		out[i] = b.qkv
	}
	return out
}

// stack is one linear layer computing q, k and v (their outputs
// concatenated), owning its weights; the three layers' own tensors are
// freed now rather than with the builder's Params.
func stack(q, k, v *nn.Linear) *nn.Linear {
	l := &nn.Linear{
		Weight: torch.Unscope(torch.Cat([]*torch.Tensor{q.Weight, k.Weight, v.Weight}, 0)),
		Bias:   torch.Unscope(torch.Cat([]*torch.Tensor{q.Bias, k.Bias, v.Bias}, 0)),
	}
	for _, t := range []*torch.Tensor{q.Weight, k.Weight, v.Weight, q.Bias, k.Bias, v.Bias} {
		t.Close()
	}
	return l
}

// chwEmbedding is the embedding layer with its input columns reordered from
// pyiqa's (H, W, C) flattening of the block's (C, H, W) map to (C, H, W):
// the map then flattens as it lies in memory, without the permuted copy
// pyiqa makes of every token's map. It owns the new weight; the loaded one
// is freed.
func chwEmbedding(e *nn.Linear, c, hw int64) *nn.Linear {
	out := e.Weight.Size(0)
	l := &nn.Linear{
		Weight: torch.Unscope(torch.Scoped(func() *torch.Tensor {
			return e.Weight.View([]int64{out, hw, c}).Transpose(1, 2).Reshape([]int64{out, c * hw})
		})),
		Bias: torch.Unscope(e.Bias.Alias()),
	}
	e.Weight.Close()
	e.Bias.Close()
	return l
}

// attention is pyiqa's MUSIQ MultiHeadAttention on x (N, L, C): every
// token's query over every token.
func (b *block) attention(x, mask2d *torch.Tensor) *torch.Tensor {
	n, l, c := x.Size(0), x.Size(1), x.Size(2)
	// (n, l, 3, heads, hd) → (3, n, heads, l, hd)
	qkv := b.qkv.Forward(x).View([]int64{n, l, 3, b.heads, c / b.heads}).Permute([]int64{2, 0, 3, 1, 4})
	return b.attend(qkv.Select(0, 0), qkv.Select(0, 1), qkv.Select(0, 2), mask2d)
}

// attend is the rest of pyiqa's MUSIQ MultiHeadAttention on heads-first
// q (N, heads, Lq, hd), k and v (N, heads, L, hd): (q·kᵀ)·d^-½, −1000 where
// either token is padding (mask2d; nil when no token is), softmax, ·v, the
// output projection: (N, Lq, C).
func (b *block) attend(q, k, v, mask2d *torch.Tensor) *torch.Tensor {
	n, lq, hd := q.Size(0), q.Size(2), q.Size(3)
	a := q.Matmul(k.Transpose(-2, -1)).MulScalar(math.Pow(float64(hd), -0.5))
	if mask2d != nil {
		a = a.MaskedFill(mask2d, -1e3)
	}
	o := a.Softmax(-1).Matmul(v).Transpose(1, 2).Reshape([]int64{n, lq, b.heads * hd})
	return b.out.Forward(o)
}

// mlp is the block's second half: x + MLP(LN2(x)).
func (b *block) mlp(x *torch.Tensor) *torch.Tensor {
	return x.Add(b.fc2.Forward(b.fc1.Forward(b.norm2.Forward(x)).Gelu()))
}

func (b *block) forward(x, mask2d *torch.Tensor) *torch.Tensor {
	return b.mlp(x.Add(b.attention(b.norm1.Forward(x), mask2d)))
}

// forwardCLS is forward for the first (cls) token alone, (N,1,C), on a
// sequence without padding: its keys and values come from every token, but
// the query, the output projection and the MLP are computed for that token
// only. The last block needs nothing more: only its cls output is read.
func (b *block) forwardCLS(x *torch.Tensor) *torch.Tensor {
	n, l, c := x.Size(0), x.Size(1), x.Size(2)
	hd := c / b.heads
	h := b.norm1.Forward(x)
	w, bias := b.qkv.Weight, b.qkv.Bias
	q := torch.Linear(h.Narrow(1, 0, 1), w.Narrow(0, 0, c), bias.Narrow(0, 0, c)).
		View([]int64{n, 1, b.heads, hd}).Permute([]int64{0, 2, 1, 3})
	kv := torch.Linear(h, w.Narrow(0, c, 2*c), bias.Narrow(0, c, 2*c)).
		View([]int64{n, l, 2, b.heads, hd}).Permute([]int64{2, 0, 3, 1, 4})
	return b.mlp(x.Narrow(1, 0, 1).Add(b.attend(q, kv.Select(0, 0), kv.Select(0, 1), nil)))
}

// stemChunk is the number of patches the stem takes at once when nothing
// taps it (at 256, its largest map is 16 MiB).
const stemChunk = 256

// stem is the ResNet root and block on every patch, then the linear
// embedding: (N, L, 3·P²) pixels to (N, L, Hidden) tokens.
func (m *Model) stem(pix *torch.Tensor, n, l int64, tap Tap) *torch.Tensor {
	p := m.cfg.PatchSize
	h := torch.Scoped(func() *torch.Tensor {
		h := m.convRoot.forward(pix.Reshape([]int64{-1, 3, p, p}))
		tap("conv_root", h)
		h = m.gnRoot.Forward(h)
		tap("gn_root", h)
		h.Relu_() // the tap has returned: gn_root is no longer read
		t, b := samePad(h.Size(2), 3, 2)
		lp, rp := samePad(h.Size(3), 3, 2)
		return torch.MaxPool2d(h.Pad([]int64{lp, rp, t, b}, torch.PadConstant, 0), []int64{3, 3}, []int64{2, 2}, []int64{0, 0})
	})
	tap("root_pool", h)
	h = m.block1.forward(h)
	tap("block1", h)
	return m.embedding.Forward(h.Reshape([]int64{n, l, -1}))
}

// Forward scores a (N,3,H,W) batch in [0,1]: (N,1) in the caller's scope.
//
// Without a tap, the padding tokens are dropped before the stem. They
// cannot change the score: the classification token's attention gives a
// padding key the logit −1000, whose softmax weight e^(−1000−max) is exactly
// 0 in float32 whenever the row's largest logit is above −896, and nothing
// else mixes tokens. At 320×256 that is 31 of 273 tokens, and the
// attention needs no mask. The last block then runs for the cls token only
// (block.forwardCLS). With a tap every token is computed, so that the
// intermediates have pyiqa's shapes.
func (m *Model) Forward(x *torch.Tensor, tap Tap) *torch.Tensor {
	s := torch.NewScope()
	defer s.Close()
	cfg := m.cfg
	dt := m.cls.DType()
	// Only the token sequence outlives the resized images.
	compact := tap == nil
	if tap == nil {
		tap = func(string, *torch.Tensor) {}
	}
	seq := torch.Scoped(func() *torch.Tensor {
		seq := cfg.Patches(x.To(dt).SubScalar(0.5).MulScalar(2))
		if compact {
			if idx := cfg.validTokens(x.Size(2), x.Size(3)); int64(len(idx)) < seq.Size(1) {
				seq = seq.IndexSelect(1, torch.FromSlice(idx, int64(len(idx))).ToDevice(seq.Device()))
			}
		}
		return seq
	})
	n, l, dim := seq.Size(0), seq.Size(1), seq.Size(2)
	tap("tokens_meta", seq.Select(0, 0).Narrow(1, dim-3, 3))
	pos := seq.Select(2, dim-3).To(torch.Int64)
	scale := seq.Select(2, dim-2).To(torch.Int64)
	var mask *torch.Tensor
	if !compact {
		mask = seq.Select(2, dim-1).To(torch.Bool)
	}
	pix := seq.Narrow(2, 0, dim-3)
	tap("patch_pixels", pix)
	var h *torch.Tensor
	if rows := n * l; compact && rows > stemChunk {
		// The stem is per patch: in chunks, its maps stay a few MiB each
		// instead of growing with the batch (64 candidates: about 1 GiB
		// per map), and the allocator reuses their memory.
		flat := pix.Reshape([]int64{rows, 1, -1})
		var parts []*torch.Tensor
		for r := int64(0); r < rows; r += stemChunk {
			k := min(stemChunk, rows-r)
			parts = append(parts, torch.Scoped(func() *torch.Tensor { return m.stem(flat.Narrow(0, r, k), k, 1, tap) }))
		}
		h = torch.Cat(parts, 0).Reshape([]int64{n, l, -1})
		for _, t := range parts {
			t.Close()
		}
	} else {
		h = torch.Scoped(func() *torch.Tensor { return m.stem(pix, n, l, tap) })
	}
	tap("embedding", h)
	table := m.posEmb.SqueezeDim(0)
	h = h.Add(table.IndexSelect(0, pos.Reshape([]int64{-1})).Reshape([]int64{n, l, -1}))
	h = h.Add(m.scaleEmb.IndexSelect(0, scale.Reshape([]int64{-1})).Reshape([]int64{n, l, -1}))
	h = torch.Cat([]*torch.Tensor{m.cls.Repeat([]int64{n, 1, 1}), h}, 1)
	var drop *torch.Tensor // nil: no padding token
	if !compact {
		full := torch.Cat([]*torch.Tensor{torch.Ones([]int64{n, 1}, torch.Bool, mask.Device()), mask}, 1)
		// mask_h * mask_w == 0: either token is padding.
		keep := full.View([]int64{n, 1, l + 1, 1}).LogicalAnd(full.View([]int64{n, 1, 1, l + 1}))
		drop = keep.LogicalNot()
	}
	tap("encoder_input", h)
	for i, blk := range m.blocks {
		if compact && i == len(m.blocks)-1 {
			h = torch.Then(h, blk.forwardCLS)
			break
		}
		h = torch.Then(h, func(h *torch.Tensor) *torch.Tensor { return blk.forward(h, drop) })
		tap(fmt.Sprintf("encoderblock_%d", i), h)
	}
	h = m.encoderNorm.Forward(h)
	c := h.Select(1, 0)
	tap("cls_feature", c)
	return s.Keep(m.head.Forward(c))
}
