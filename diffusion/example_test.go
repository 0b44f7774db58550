package diffusion_test

import (
	"context"
	"fmt"
	"path/filepath"

	"github.com/dp2osr/dp2o/diffusion"
	"github.com/dp2osr/dp2o/imageio"
	"github.com/dp2osr/dp2o/torch"
)

// Super-resolve one image ×2 with the bundled tiny model (real use: a
// stable-diffusion-2-base folder and a DP²O-SD2 model.safetensors).
func ExampleSD2_Upscale() {
	base := filepath.Join("..", "assets", "tiny-sd2")
	p, err := diffusion.LoadSD2(base, filepath.Join(base, "controlnet", "model.safetensors"), diffusion.LoadOptions{Device: torch.CPU})
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
	o := diffusion.DefaultUpscaleOptions()
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
