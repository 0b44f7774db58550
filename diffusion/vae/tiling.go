package vae

import "github.com/dp2osr/dp2o/torch"

// DefaultTileOverlap is diffusers' tile_overlap_factor.
const DefaultTileOverlap = 0.25

// Tiling configures diffusers' tiled encode/decode (enable_tiling). Images
// are cut into overlapping tiles of TileSize pixels (latents into tiles of
// TileSize/f), each tile goes through the encoder or decoder alone, and
// neighbouring results are blended linearly over the overlap before being
// cropped and stitched. Results differ slightly from the untiled pass
// (every tile sees only its own context), which is the price of bounded
// memory.
type Tiling struct {
	Enabled bool
	// TileSize is tile_sample_min_size in pixels; 0 takes the config's
	// sample_size, as diffusers does.
	TileSize int
	// Overlap is tile_overlap_factor; 0 means DefaultTileOverlap.
	Overlap float64
}

func (t Tiling) sampleTile(c Config) int {
	if t.TileSize > 0 {
		return t.TileSize
	}
	return c.SampleSize.First()
}

// latentTile is tile_latent_min_size = int(sample / 2^(blocks−1)).
func (t Tiling) latentTile(c Config) int {
	return int(float64(t.sampleTile(c)) / float64(c.DownsampleFactor()))
}

func (t Tiling) overlap() float64 {
	if t.Overlap > 0 {
		return t.Overlap
	}
	return DefaultTileOverlap
}

// tileGrid runs f on every tile of x (tiles of size tile every stride
// positions along H and W), blends each result with the one above and the
// one to its left over blend rows/columns (in place, in diffusers' order),
// crops it to limit×limit and stitches the crops.
func tileGrid(x *torch.Tensor, tile, stride, blend, limit int64, f func(*torch.Tensor) *torch.Tensor) *torch.Tensor {
	if stride < 1 {
		torch.Errorf("vae.tiling", "tile %d with overlap leaves a stride of %d", tile, stride)
	}
	s := torch.NewScope()
	defer s.Close()
	sh := x.Shape()
	var prev []*torch.Tensor
	var rows []*torch.Tensor
	for i := int64(0); i < sh[2]; i += stride {
		var row, crops []*torch.Tensor
		for j := int64(0); j < sh[3]; j += stride {
			t := f(x.Slice(2, i, i+tile, 1).Slice(3, j, j+tile, 1))
			if prev != nil {
				blendV(prev[len(row)], t, blend)
			}
			if len(row) > 0 {
				blendH(row[len(row)-1], t, blend)
			}
			row = append(row, t)
			crops = append(crops, t.Slice(2, 0, limit, 1).Slice(3, 0, limit, 1))
		}
		rows = append(rows, torch.Cat(crops, 3))
		for _, c := range crops {
			c.Close()
		}
		for _, t := range prev {
			t.Close()
		}
		prev = row
	}
	return s.Keep(torch.Cat(rows, 2))
}

// blendV is diffusers' blend_v: the first rows of b fade in from the last
// rows of a, row by row, written into b.
func blendV(a, b *torch.Tensor, extent int64) { blend(a, b, extent, 2) }

// blendH is diffusers' blend_h, along the columns.
func blendH(a, b *torch.Tensor, extent int64) { blend(a, b, extent, 3) }

func blend(a, b *torch.Tensor, extent int64, dim int) {
	na, nb := a.Size(dim), b.Size(dim)
	extent = min(na, nb, extent)
	for y := range extent {
		// A scope per row: its three temporaries go before the next row's.
		func() {
			rs := torch.NewScope()
			defer rs.Close()
			w := float64(y) / float64(extent)
			dst := b.Select(int64(dim), y)
			mixed := a.Select(int64(dim), na-extent+y).MulScalar(1 - w).Add(dst.MulScalar(w))
			dst.Copy_(mixed)
		}()
	}
}

// tiledEncode is diffusers' tiled_encode up to the moments.
func (m *Model) tiledEncode(x *torch.Tensor) *torch.Tensor {
	ov := m.Tiling.overlap()
	ts := m.Tiling.sampleTile(m.Config)
	tl := m.Tiling.latentTile(m.Config)
	stride := int(float64(ts) * (1 - ov))
	blendExt := int(float64(tl) * ov)
	limit := tl - blendExt
	return tileGrid(x, int64(ts), int64(stride), int64(blendExt), int64(limit), func(t *torch.Tensor) *torch.Tensor {
		return m.encodeMoments(t, nil)
	})
}

// tiledDecode is diffusers' tiled_decode.
func (m *Model) tiledDecode(z *torch.Tensor) *torch.Tensor {
	ov := m.Tiling.overlap()
	ts := m.Tiling.sampleTile(m.Config)
	tl := m.Tiling.latentTile(m.Config)
	stride := int(float64(tl) * (1 - ov))
	blendExt := int(float64(ts) * ov)
	limit := ts - blendExt
	return tileGrid(z, int64(tl), int64(stride), int64(blendExt), int64(limit), func(t *torch.Tensor) *torch.Tensor {
		return m.decodeTile(t, nil)
	})
}
