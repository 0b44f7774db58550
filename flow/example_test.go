package flow_test

import (
	"context"
	"fmt"
	"path/filepath"

	"github.com/dp2osr/dp2o/flow"
	"github.com/dp2osr/dp2o/imageio"
	"github.com/dp2osr/dp2o/torch"
)

// Super-resolve one image ×2 with C-FLUX on the bundled tiny model (real
// use: a FLUX.1-dev folder and a DP²O-FLUX model.safetensors with the
// default 4-double, 0-single ControlNet layout).
func ExampleCFLUX_Upscale() {
	base := filepath.Join("..", "assets", "tiny-flux")
	lo := flow.DefaultLoadOptions()
	p, err := flow.LoadCFLUX(base, filepath.Join(base, "controlnet", "model.safetensors"), lo)
	if err != nil {
		fmt.Println(err)
		return
	}
	defer p.Close()
	img, err := imageio.Load(filepath.Join("..", "assets", "sample", "lr_house.png"))
	if err != nil {
		fmt.Println(err)
		return
	}
	o := flow.DefaultUpscaleOptions() // 25 steps, guidance 2.5, control scale 1, AdaIN
	o.Prompt = "house, tree, sky, road"
	o.Upscale = 2
	o.ProcessSize = 128 // small and fast for the example; the official default is 512
	o.Steps = 4
	gen := torch.MustGenerator(torch.CPU, 0) // one generator for all images, as the official script
	out, err := p.Upscale(context.Background(), img, o, gen)
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Printf("%d×%d → %d×%d\n", img.W, img.H, out.W, out.H)
	// Output: 128×128 → 256×256
}
