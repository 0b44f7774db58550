package unet

import (
	"fmt"
	"math"
	"strings"

	"github.com/dp2osr/dp2o/torch"
	"github.com/dp2osr/dp2o/torch/nn"
)

// copiedFromUNet are the modules ControlNetModel.from_unet copies.
var copiedFromUNet = []string{"conv_in.", "time_embedding.", "down_blocks.", "mid_block."}

// FromUNet does what diffusers' ControlNetModel.from_unet does: a ControlNet
// with the UNet's configuration (ControlNetConfigFromUNet) whose conv_in,
// time embedding, down blocks and mid block start as copies of the UNet's
// weights; the conditioning embedding gets PyTorch's default
// initialisation (Kaiming-uniform weights, uniform biases, drawn from
// opts.Generator; nil: libtorch's default generator), and the "zero convolutions"
// (controlnet_down_blocks, controlnet_mid_block and the conditioning
// embedding's conv_out) start at zero, so the new ControlNet leaves the UNet
// unchanged until trained.
//
// The weights are created by b, which should have no source (nn.NewBuilder
// with a nil Source) and sets their dtype and device; as with NewControlNet
// the caller checks b.Finish() and owns the parameters.
func FromUNet(u *UNet, b *nn.Builder, opts ControlNetOptions) (cn *ControlNet, err error) {
	cfg := ControlNetConfigFromUNet(u.Config, opts)
	cn, err = NewControlNet(b, cfg)
	if err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			for _, p := range cn.params {
				p.Tensor.Close()
			}
			cn = nil
		}
	}()
	defer torch.Recover(&err)
	src := map[string]*torch.Tensor{}
	for _, p := range u.Parameters() {
		src[p.Name] = p.Tensor
	}
	torch.NoGrad(func() {
		for _, p := range cn.params {
			switch {
			case hasAnyPrefix(p.Name, copiedFromUNet):
				w, ok := src[p.Name]
				if !ok {
					torch.Errorf("from_unet", "the UNet has no weight %q", p.Name)
				}
				if fmt.Sprint(w.Shape()) != fmt.Sprint(p.Tensor.Shape()) {
					torch.Errorf("from_unet", "%s: UNet %v, ControlNet %v", p.Name, w.Shape(), p.Tensor.Shape())
				}
				p.Tensor.Copy_(w)
			case strings.HasPrefix(p.Name, "controlnet_cond_embedding.") && !strings.HasPrefix(p.Name, "controlnet_cond_embedding.conv_out."):
				// Filled below, module by module, as PyTorch draws them.
			default:
				p.Tensor.Zero_()
			}
		}
		ce := cn.condEmbed
		for _, c := range append([]*nn.Conv2d{ce.convIn}, ce.blocks...) {
			defaultInitConv(c, opts.Generator)
		}
	})
	return cn, nil
}

func hasAnyPrefix(s string, prefixes []string) bool {
	for _, p := range prefixes {
		if strings.HasPrefix(s, p) {
			return true
		}
	}
	return false
}

// defaultInitConv is nn.Conv2d.reset_parameters: kaiming_uniform_(a=√5) on
// the weight, which is U(−1/√fan_in, 1/√fan_in), and the same bound for
// the bias.
func defaultInitConv(c *nn.Conv2d, gen *torch.Generator) {
	sh := c.Weight.Shape()
	fanIn := sh[1] * sh[2] * sh[3]
	bound := 1 / math.Sqrt(float64(fanIn))
	uniform(c.Weight, bound, gen)
	if c.Bias != nil {
		uniform(c.Bias, bound, gen)
	}
}

// uniform fills t with U(−bound, bound) drawn from gen. A generator of
// another device type (a CPU generator for CUDA weights, say) draws on its
// own device, so that the numbers do not depend on where the model lives.
func uniform(t *torch.Tensor, bound float64, gen *torch.Generator) {
	if gen == nil || gen.Device().Type == t.Device().Type {
		t.Uniform_(-bound, bound, gen)
		return
	}
	tmp := torch.Empty(t.Shape(), t.DType(), gen.Device())
	defer tmp.Close()
	tmp.Uniform_(-bound, bound, gen)
	t.Copy_(tmp)
}
