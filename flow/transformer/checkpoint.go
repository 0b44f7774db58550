package transformer

import "github.com/dp2osr/dp2o/torch"

// doubleForward runs a double block, through torch.Checkpoint when
// checkpointed is set (diffusers' gradient checkpointing of
// FluxTransformer2DModel and FluxControlNetModel: one segment per block).
func doubleForward(checkpointed bool, blk *doubleBlock, x, ctx, siluTemb *torch.Tensor, r rope, imgOnly bool) (xOut, ctxOut *torch.Tensor) {
	if !checkpointed {
		return blk.forward(x, ctx, siluTemb, r, imgOnly)
	}
	out := torch.Checkpoint(func(in []*torch.Tensor) []*torch.Tensor {
		x, c := blk.forward(in[0], in[1], in[2], rope{cos: in[3], sin: in[4]}, imgOnly)
		if c == nil {
			return []*torch.Tensor{x}
		}
		return []*torch.Tensor{x, c}
	}, x, ctx, siluTemb, r.cos, r.sin)
	if len(out) == 1 {
		return out[0], nil
	}
	return out[0], out[1]
}

// singleForward is doubleForward for a single block.
func singleForward(checkpointed bool, blk *singleBlock, h, siluTemb *torch.Tensor, r rope, imgOnly bool, txtLen int64) *torch.Tensor {
	if !checkpointed {
		return blk.forward(h, siluTemb, r, imgOnly, txtLen)
	}
	return torch.Checkpoint(func(in []*torch.Tensor) []*torch.Tensor {
		return []*torch.Tensor{blk.forward(in[0], in[1], rope{cos: in[2], sin: in[3]}, imgOnly, txtLen)}
	}, h, siluTemb, r.cos, r.sin)[0]
}
