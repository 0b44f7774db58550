package transformer

import (
	"github.com/dp2osr/dp2o/torch"
)

// PosEmbed is diffusers' FluxPosEmbed: for ids (N, axes) and axis a of dim
// d_a, ω_k = 1/θ^(2k/d_a) and the angles ids[:, a]·ω_k are computed in
// float64; their cos and sin, each repeated twice (interleaved) and cast
// to float32, are concatenated over the axes → cos, sin (N, Σd_a).
func PosEmbed(ids *torch.Tensor, axesDims []int, theta float64) (cos, sin *torch.Tensor, err error) {
	defer torch.Recover(&err)
	if ids.Dim() != 2 || ids.Size(1) != int64(len(axesDims)) {
		torch.Errorf("flux pos_embed", "ids must be (tokens, %d), got shape %v", len(axesDims), ids.Shape())
	}
	cos, sin = posEmbed(ids, axesDims, theta)
	return cos, sin, nil
}

func posEmbed(ids *torch.Tensor, axesDims []int, theta float64) (cos, sin *torch.Tensor) {
	s := torch.NewScope()
	defer s.Close()
	dev := ids.Device()
	pos := ids.To(torch.Float32).To(torch.Float64)
	var coss, sins []*torch.Tensor
	for i, d := range axesDims {
		// 1 / θ ** (arange(0, d, 2, float64) / d)
		e := torch.Arange(0, float64(d), 2, torch.Float64, dev).DivScalar(float64(d))
		freqs := torch.Full([]int64{int64(d / 2)}, theta, torch.Float64, dev).PowT(e).Reciprocal()
		ang := pos.Select(1, int64(i)).Unsqueeze(1).Mul(freqs.Unsqueeze(0)) // torch.outer
		coss = append(coss, ang.Cos().RepeatInterleave(2, 1).To(torch.Float32))
		sins = append(sins, ang.Sin().RepeatInterleave(2, 1).To(torch.Float32))
	}
	cos = torch.Cat(coss, -1)
	sin = torch.Cat(sins, -1)
	s.Keep(cos, sin)
	return cos, sin
}

// applyRotary is diffusers' apply_rotary_emb (use_real, unbind dim −1) for
// x (B, H, S, D): pairs (x0, x1) → (x0·cos − x1·sin, x1·cos + x0·sin),
// computed in float32 and cast back to x's dtype. sinSigned is sin with
// the even entries negated ([−s0, s0, −s1, s1, …], signedSin), so that the
// rotation is x·cos + swap(x)·sinSigned with swap exchanging each pair:
// the same products and sums, in three passes over x instead of five.
func applyRotary(x, cos, sinSigned *torch.Tensor) *torch.Tensor {
	s := torch.NewScope()
	defer s.Close()
	xf := x.To(torch.Float32)
	sh := xf.Shape()
	pairs := append(append([]int64{}, sh[:len(sh)-1]...), -1, 2)
	swapped := xf.Reshape(pairs).Flip([]int64{-1}).Reshape(sh)
	out := xf.Mul(cos)
	out.Addcmul_(swapped, sinSigned, 1)
	return s.Keep(out.To(x.DType()))
}

// signedSin negates the even entries of sin (S, D): the factor of x1 in
// the first element of each rotated pair.
func signedSin(sin *torch.Tensor) *torch.Tensor {
	return torch.Scoped(func() *torch.Tensor {
		sh := sin.Shape()
		sign := torch.FromSlice([]float32{-1, 1}, 2).ToDevice(sin.Device()).To(sin.DType())
		return sin.Reshape(append(append([]int64{}, sh[:len(sh)-1]...), -1, 2)).Mul(sign).Reshape(sh)
	})
}
