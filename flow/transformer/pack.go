package transformer

import (
	"github.com/dp2osr/dp2o/torch"
)

// PackLatents is FluxPipeline._pack_latents: latents (B, C, h, w) with h and
// w even → (B, (h/2)·(w/2), 4C), packed[b, r·(w/2)+c, ch·4 + dy·2 + dx] =
// z[b, ch, 2r+dy, 2c+dx].
func PackLatents(z *torch.Tensor) (out *torch.Tensor, err error) {
	defer torch.Recover(&err)
	if z.Dim() != 4 {
		torch.Errorf("flux pack", "latents must be (batch, channels, h, w), got shape %v", z.Shape())
	}
	b, c, h, w := z.Size(0), z.Size(1), z.Size(2), z.Size(3)
	if h%2 != 0 || w%2 != 0 || h == 0 || w == 0 {
		torch.Errorf("flux pack", "latent size %d×%d must be even and non-zero for 2×2 packing (image sides must be multiples of 16)", h, w)
	}
	return torch.Scoped(func() *torch.Tensor {
		return z.View([]int64{b, c, h / 2, 2, w / 2, 2}).Permute([]int64{0, 2, 4, 1, 3, 5}).Reshape([]int64{b, (h / 2) * (w / 2), c * 4})
	}), nil
}

// UnpackLatents is FluxPipeline._unpack_latents for latents of h×w (the
// latent size, both even): packed (B, (h/2)·(w/2), 4C) → (B, C, h, w).
func UnpackLatents(p *torch.Tensor, h, w int64) (out *torch.Tensor, err error) {
	defer torch.Recover(&err)
	if h%2 != 0 || w%2 != 0 || h <= 0 || w <= 0 {
		torch.Errorf("flux unpack", "latent size %d×%d must be even and positive (image sides must be multiples of 16)", h, w)
	}
	if p.Dim() != 3 || p.Size(1) != (h/2)*(w/2) || p.Size(2)%4 != 0 {
		torch.Errorf("flux unpack", "packed latents must be (batch, %d, 4·channels) for a %d×%d latent, got shape %v", (h/2)*(w/2), h, w, p.Shape())
	}
	b, c := p.Size(0), p.Size(2)
	return torch.Scoped(func() *torch.Tensor {
		return p.View([]int64{b, h / 2, w / 2, c / 4, 2, 2}).Permute([]int64{0, 3, 1, 4, 2, 5}).Reshape([]int64{b, c / 4, h, w})
	}), nil
}

// ImageIDs is FluxPipeline._prepare_latent_image_ids for the packed grid
// gridH×gridW (the latent size halved): (gridH·gridW, 3) rows [0, row, col]
// in row-major order.
func ImageIDs(gridH, gridW int64, dtype torch.DType, dev torch.Device) (out *torch.Tensor, err error) {
	defer torch.Recover(&err)
	if gridH <= 0 || gridW <= 0 {
		torch.Errorf("flux image ids", "grid %d×%d must be positive", gridH, gridW)
	}
	return torch.Scoped(func() *torch.Tensor {
		ids := torch.Zeros([]int64{gridH, gridW, 3}, torch.Float32, torch.CPU)
		rows := torch.Arange(0, float64(gridH), 1, torch.Float32, torch.CPU).Unsqueeze(1).Expand([]int64{gridH, gridW})
		cols := torch.Arange(0, float64(gridW), 1, torch.Float32, torch.CPU).Unsqueeze(0).Expand([]int64{gridH, gridW})
		ids.Select(2, 1).Copy_(rows)
		ids.Select(2, 2).Copy_(cols)
		out := ids.Reshape([]int64{gridH * gridW, 3}).To(dtype)
		if dev.Type != torch.DeviceCPU {
			out = out.ToDevice(dev)
		}
		return out
	}), nil
}

// TextIDs is the (n, 3) zeros FLUX's encode_prompt makes for n text tokens.
func TextIDs(n int64, dtype torch.DType, dev torch.Device) (out *torch.Tensor, err error) {
	defer torch.Recover(&err)
	if n <= 0 {
		torch.Errorf("flux text ids", "token count %d must be positive", n)
	}
	return torch.Zeros([]int64{n, 3}, dtype, dev), nil
}
