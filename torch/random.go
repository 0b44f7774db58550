package torch

// RandnFor draws N(0, 1) noise of shape and dtype for a tensor on dev the
// way diffusers' randn_tensor does: on the generator's device (the CPU for a
// CPU generator, so CPU-seeded runs reproduce across devices), then moved
// to dev. A nil gen draws from dev's default generator. A CUDA generator
// cannot draw for a CPU tensor (*Error panic), as diffusers refuses too.
func RandnFor(shape []int64, gen *Generator, dtype DType, dev Device) *Tensor {
	drawOn := dev
	if gen != nil && gen.Device().Type != dev.Type {
		if gen.Device().Type != DeviceCPU {
			Errorf("randn", "cannot draw %v noise for a tensor on %v", gen.Device(), dev)
		}
		drawOn = CPU
	}
	z := Randn(shape, gen, dtype, drawOn)
	if drawOn == dev {
		return z
	}
	defer z.Close()
	return z.ToDevice(dev)
}
