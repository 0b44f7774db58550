// Command variantcheck loads a UNet folder written by diffusers'
// save_pretrained (any file layout: sharded, .bin, a variant) with
// unet.LoadVariant and checks every parameter bit for bit against the
// reference folder's, rounded through float16 for fp16 variants.
// scripts/variantcheck/run.sh drives it.
package main

import (
	"fmt"
	"os"

	"github.com/dp2osr/dp2o/diffusion/unet"
	"github.com/dp2osr/dp2o/torch"
)

func main() {
	if len(os.Args) != 4 {
		fmt.Fprintln(os.Stderr, "usage: variantcheck REFERENCE_DIR DIR VARIANT (\"\" for none)")
		os.Exit(2)
	}
	if err := check(os.Args[1], os.Args[2], os.Args[3]); err != nil {
		fmt.Fprintln(os.Stderr, "variantcheck:", err)
		os.Exit(1)
	}
}

func check(refDir, dir, variant string) error {
	ref, err := unet.Load(refDir, torch.Float32, torch.CPU)
	if err != nil {
		return err
	}
	defer ref.Close()
	u, err := unet.LoadVariant(dir, variant, torch.Float32, torch.CPU)
	if err != nil {
		return err
	}
	defer u.Close()
	s := torch.NewScope()
	defer s.Close()
	for _, n := range ref.Params.Names {
		want := ref.Params.Get(n)
		if variant == "fp16" {
			want = want.To(torch.Float16).To(torch.Float32)
		}
		got := u.Params.Get(n)
		if got == nil {
			return fmt.Errorf("%s: no parameter %s", dir, n)
		}
		if string(got.Bytes()) != string(want.Bytes()) {
			return fmt.Errorf("%s: parameter %s differs", dir, n)
		}
	}
	fmt.Printf("%s (variant %q): %d parameters bit-identical\n", dir, variant, len(ref.Params.Names))
	return nil
}
