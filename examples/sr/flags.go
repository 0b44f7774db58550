package main

import "github.com/urfave/cli/v2"

// Defaults of the bundled demo. The official script's defaults point at
// preset/ folders of its repository; here they point at the tiny model and
// sample shipped in assets/ so that `go run ./examples/sr` works anywhere in
// the repo.
const (
	defaultImages     = "assets/sample"
	defaultOutput     = "out/sr"
	defaultBase       = "assets/tiny-sd2"
	defaultControlNet = "assets/tiny-sd2/controlnet/model.safetensors"
)

func flags() []cli.Flag {
	return []cli.Flag{
		&cli.StringFlag{Name: "image_path", Value: defaultImages, Usage: "input image or folder (*.png *.jpg *.jpeg *.bmp *.tiff *.webp and upper-case variants, as the official glob; sorted)"},
		&cli.StringFlag{Name: "output_dir", Value: defaultOutput, Usage: "output folder (created if missing)"},
		&cli.StringFlag{Name: "prompt", Value: "", Usage: "text prompt for every image (default: each image's RAM/DAPE tags, with --ram_path and --dape_path, as the official script)"},
		&cli.StringFlag{Name: "negative_prompt", Value: "dotted, noise, blur, lowres, smooth", Usage: "negative prompt for classifier-free guidance"},
		&cli.IntFlag{Name: "sample_times", Value: 1, Usage: "samples per image; with more than one, each is written to <name>_<k>.png"},
		&cli.IntFlag{Name: "num_inference_steps", Value: 50, Usage: "DDPM steps"},
		&cli.IntFlag{Name: "upscale", Value: 1, Usage: "upscaling factor (rscale of the official resize rules)"},
		&cli.Int64Flag{Name: "seed", Value: 0, Usage: "generator seed (one generator for all images and samples, as the official script)"},
		&cli.IntFlag{Name: "process_size", Value: 512, Usage: "short side the image is processed at, at least"},
		&cli.Float64Flag{Name: "control_scale", Value: 1.0, Usage: "ControlNet conditioning scale (the official SD2 script ignores its flag and uses 1.0)"},
		&cli.StringFlag{Name: "align_method", Value: "adain", Usage: "colour fix: adain, wavelet or nofix"},
		&cli.Float64Flag{Name: "guidance_scale", Value: 3.5, Usage: "classifier-free guidance scale"},
		&cli.StringFlag{Name: "pretrained_model_name_or_path", Value: defaultBase, Usage: "stable-diffusion-2-base folder (diffusers layout) or model id (stabilityai/stable-diffusion-2-base: fetched into the Hugging Face cache, HF_HOME / HF_HUB_OFFLINE / HF_TOKEN as for diffusers)"},
		&cli.StringFlag{Name: "controlnet_model_name_or_path", Value: defaultControlNet, Usage: "C-SD2 / DP²O-SD2 ControlNet: a model.safetensors (or .bin), a diffusers ControlNet folder, a model id, or a file in a model repository (org/name/dp2o-sd2/model.safetensors)"},
		&cli.StringFlag{Name: "revision", Usage: "revision (branch, tag or commit) of a --pretrained_model_name_or_path model id (default main)"},
		&cli.StringFlag{Name: "variant", Usage: "weights variant, e.g. fp16 (diffusion_pytorch_model.fp16.safetensors), for the model folders that have it"},
		&cli.StringFlag{Name: "mixed_precision", Value: "fp16", Usage: "weights of text encoder, UNet and ControlNet on CUDA: no, fp16 or bf16 (the VAE stays float32; CPU always runs float32)"},
		&cli.StringFlag{Name: "device", Value: "auto", Usage: "cpu, cuda, cuda:N or auto (cuda when available)"},
		&cli.IntFlag{Name: "threads", Value: 0, Usage: "libtorch intra-op threads on the CPU (0: libtorch's default)"},
		&cli.BoolFlag{Name: "no_autocast", Usage: "on CUDA, do not run the pipeline under float16 autocast (the official script does)"},
		&cli.BoolFlag{Name: "vae_tiling", Usage: "decode with the VAE in overlapping tiles (diffusers' enable_tiling) for outputs too large for memory in one piece"},
		&cli.BoolFlag{Name: "quiet", Usage: "no progress bar"},
		// Accepted for compatibility with the official script; unused there too.
		&cli.BoolFlag{Name: "save_prompts", Usage: "unused (as in the official script)"},
		&cli.StringFlag{Name: "suffix", Usage: "unused (as in the official script)"},
		&cli.StringFlag{Name: "ram_path", Usage: "RAM checkpoint (ram_swin_large_14m.pth) that tags each image for its prompt when --prompt is not given (the official default is preset/models/ram_swin_large_14m.pth)"},
		&cli.StringFlag{Name: "dape_path", Usage: "DAPE LoRA checkpoint (DAPE.pth) merged into RAM (the official default is preset/models/DAPE.pth)"},
		&cli.BoolFlag{Name: "enable_xformers_memory_efficient_attention", Usage: "unused: libtorch's fused attention is used on CUDA"},
	}
}
