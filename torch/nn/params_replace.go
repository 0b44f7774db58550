package nn

import "github.com/dp2osr/dp2o/torch"

// Replace swaps the parameter old for repl, which the Params then own
// (under old's name), and closes old. It reports whether old was one of the
// parameters; if not, nothing changes. Models use it to re-lay weights out
// after loading (e.g. channels-last convolution kernels).
func (p *Params) Replace(old, repl *torch.Tensor) bool {
	for name, t := range p.Tensors {
		if t == old {
			p.Tensors[name] = torch.Unscope(repl)
			old.Close()
			return true
		}
	}
	return false
}
