// Package candidates holds what the sample and evaluate programs share:
// the flags of a candidate-sampling job and the job they describe.
package candidates

import "github.com/urfave/cli/v2"

// InputFlags name the inputs: a degrade folder, or LR and HR folders.
func InputFlags() []cli.Flag {
	return []cli.Flag{
		&cli.StringFlag{Name: "input_dir", Usage: "a folder made by examples/degrade: its lr/ images are the inputs, its hr/ images (same names) their references"},
		&cli.StringFlag{Name: "lr_dir", Usage: "folder of LR images (instead of --input_dir)"},
		&cli.StringFlag{Name: "hr_dir", Usage: "folder of the HR images, named as the LR images (with --lr_dir; needed later for full-reference metrics)"},
	}
}

// ModelFlags are the flags of the model and of its candidate sampling;
// mDefault explains what --num_candidates 0 means in this program.
func ModelFlags(mDefault string) []cli.Flag {
	return []cli.Flag{
		&cli.StringFlag{Name: "model", Value: "sd2", Usage: "sd2 (C-SD2: DDPM, real CFG) or flux (C-FLUX: Euler, guidance embedding)"},
		&cli.StringFlag{Name: "pretrained_model_name_or_path", Usage: "base model folder (diffusers layout) or model id (default: the bundled tiny model of --model, assets/tiny-sd2 or assets/tiny-flux)"},
		&cli.StringFlag{Name: "controlnet_model_name_or_path", Usage: "the frozen ControlNet (C-SD2 / C-FLUX model.safetensors, a diffusers ControlNet folder or id; default: the bundled tiny one)"},
		&cli.IntFlag{Name: "num_candidates", Value: 0, Usage: "M, candidates per input (" + mDefault + ")"},
		&cli.Uint64Flag{Name: "seed", Value: 0, Usage: "first seed of the noise pool: candidate k uses seed + k"},
		&cli.IntFlag{Name: "batch_size", Value: 4, Usage: "candidates of one input sampled together (part of the set's identity: another value gives other rounding and is refused for an existing folder)"},
		&cli.IntFlag{Name: "num_inference_steps", Value: 0, Usage: "denoising steps (0: 50 for sd2, 25 for flux, as the paper's candidate generation)"},
		&cli.Float64Flag{Name: "guidance_scale", Value: -1, Usage: "CFG scale for sd2, guidance embedding for flux (default: 3.5 for sd2, 2.5 for flux)"},
		&cli.Float64Flag{Name: "control_scale", Value: 1, Usage: "ControlNet conditioning scale"},
		&cli.StringFlag{Name: "negative_prompt", Value: "dotted, noise, blur, lowres, smooth", Usage: "sd2's negative prompt for CFG (unused by flux)"},
		&cli.IntFlag{Name: "process_size", Value: 512, Usage: "short side the image is processed at, at least (official resize rules)"},
		&cli.IntFlag{Name: "upscale", Value: 4, Usage: "upscaling factor: the candidates are the LR size × this (4: the HR size of examples/degrade's ×4 LR)"},
		&cli.StringFlag{Name: "align_method", Value: "adain", Usage: "colour fix: adain, wavelet or nofix"},
		&cli.BoolFlag{Name: "pad16", Usage: "flux: pad processing sizes that are not multiples of 16 (edge replication) and crop the output"},
		&cli.StringFlag{Name: "prompt", Usage: "the prompt of every input (default: RAM/DAPE tags with --ram_path and --dape_path, or --prompts)"},
		&cli.StringFlag{Name: "prompts", Usage: "JSON file {\"<input name>\": \"prompt\", …} giving each input its prompt"},
		&cli.StringFlag{Name: "ram_path", Usage: "RAM checkpoint (ram_swin_large_14m.pth): tag each LR image for its prompt, as the official scripts"},
		&cli.StringFlag{Name: "dape_path", Usage: "DAPE LoRA checkpoint (DAPE.pth) merged into RAM"},
		&cli.StringFlag{Name: "device", Value: "auto", Usage: "cpu, cuda, cuda:N or auto (cuda when available)"},
		&cli.StringFlag{Name: "mixed_precision", Value: "fp16", Usage: "weights on CUDA: no, fp16 or bf16 (the VAE stays float32; the CPU runs float32)"},
		&cli.BoolFlag{Name: "no_autocast", Usage: "on CUDA, do not run under float16 autocast (the official scripts do)"},
		&cli.IntFlag{Name: "num_double_layers", Value: 4, Usage: "flux: ControlNet double-stream blocks when no config.json sits beside the checkpoint"},
		&cli.IntFlag{Name: "num_single_layers", Value: 0, Usage: "flux: ControlNet single-stream blocks when no config.json sits beside the checkpoint"},
		&cli.IntFlag{Name: "threads", Value: 0, Usage: "libtorch intra-op threads on the CPU (0: libtorch's default)"},
	}
}
