package diffusion

import "github.com/dp2osr/dp2o/torch"

// ToUint8 converts images in [0, 1] to 8 bits as diffusers' numpy_to_pil
// does: (x·255).round() — round half to even — then uint8.
func ToUint8(x *torch.Tensor) *torch.Tensor {
	s := torch.NewScope()
	defer s.Close()
	return s.Keep(x.To(torch.Float32).MulScalar(255).Round().To(torch.Uint8))
}
