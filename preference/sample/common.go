package sample

import (
	"fmt"

	"github.com/dp2osr/dp2o/diffusion"
	"github.com/dp2osr/dp2o/diffusion/colorfix"
	"github.com/dp2osr/dp2o/imageio"
	"github.com/dp2osr/dp2o/torch"
)

// generators makes one generator per seed on dev (diffusers'
// torch.Generator(device).manual_seed(seed)).
func generators(dev torch.Device, seeds []uint64) ([]*torch.Generator, error) {
	gens := make([]*torch.Generator, 0, len(seeds))
	for _, s := range seeds {
		g, err := torch.NewGenerator(dev, s)
		if err != nil {
			return nil, fmt.Errorf("generator for seed %d: %w", s, err)
		}
		gens = append(gens, g)
	}
	return gens, nil
}

// drawEach draws one N(0,1) tensor of shape (1, …) from each generator (as
// randn_tensor draws it: on the CPU for a CPU generator) and stacks them
// along the batch dimension.
func drawEach(gens []*torch.Generator, shape []int64, dt torch.DType, dev torch.Device) *torch.Tensor {
	if len(gens) == 1 {
		return torch.RandnFor(shape, gens[0], dt, dev)
	}
	parts := make([]*torch.Tensor, len(gens))
	for j, g := range gens {
		parts[j] = torch.RandnFor(shape, g, dt, dev)
	}
	out := torch.Cat(parts, 0)
	for _, t := range parts {
		t.Close()
	}
	return out
}

// expand repeats a (1, …) tensor to (b, …).
func expand(t *torch.Tensor, b int64) *torch.Tensor {
	if b == 1 {
		return t
	}
	sh := t.Shape()
	sh[0] = b
	return t.Expand(sh).Contiguous()
}

// finish turns the decoded batch (B, 3, H, W) in [0, 1] into the saved
// outputs: 8-bit with diffusers' rounding, cropped to the processing size,
// colour-fixed against the processing image and resized as the plan says.
func finish(out *torch.Tensor, proc *imageio.RGB8, plan imageio.Plan, align colorfix.Method) (imgs []*imageio.RGB8, err error) {
	B := out.Size(0)
	for j := int64(0); j < B; j++ {
		var pix []uint8
		if err := torch.Try(func() {
			s := torch.NewScope()
			defer s.Close()
			x := out.Narrow(0, j, 1).SqueezeDim(0)
			x = x.Narrow(1, 0, int64(proc.H)).Narrow(2, 0, int64(proc.W))
			pix = torch.ToSlice[uint8](diffusion.ToUint8(x.Permute([]int64{1, 2, 0}).Contiguous()))
		}); err != nil {
			return nil, err
		}
		fixed, err := colorfix.FixRGB(align, pix, proc.Pix, proc.W, proc.H)
		if err != nil {
			return nil, err
		}
		imgs = append(imgs, plan.Finish(&imageio.RGB8{W: proc.W, H: proc.H, Pix: fixed}))
	}
	return imgs, nil
}
