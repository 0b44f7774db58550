// Command sample makes DP²O-SR's candidate sets: for every LR image, M
// outputs of the frozen model (C-SD2, or C-FLUX with --model flux) with the
// seeds of a fixed noise pool, as PNG files with a JSON-lines manifest
// (package preference/sample).
//
//	go run ./examples/sample --input_dir data/ --output_dir cands/ --num_candidates 32
//
// --input_dir is a folder made by examples/degrade (lr/ and hr/); or give
// --lr_dir and --hr_dir. Candidate k of every input is sampled with seed
// --seed + k, the candidates of an input in batches of --batch_size. A run
// can be killed and rerun at any point; n processes (or machines) can each
// take a part with --shard i --num_shards n, and `sample merge` with the
// same inputs then checks that every candidate exists exactly once.
package main

import (
	"fmt"
	"os"

	"github.com/urfave/cli/v2"
)

func main() {
	if err := newApp().Run(os.Args); err != nil {
		fmt.Fprintln(os.Stderr, "sample:", err)
		os.Exit(1)
	}
}

func inputFlags() []cli.Flag {
	return []cli.Flag{
		&cli.StringFlag{Name: "input_dir", Usage: "a folder made by examples/degrade: its lr/ images are the inputs, its hr/ images (same names) their references"},
		&cli.StringFlag{Name: "lr_dir", Usage: "folder of LR images (instead of --input_dir)"},
		&cli.StringFlag{Name: "hr_dir", Usage: "folder of the HR images, named as the LR images (with --lr_dir; needed later for full-reference metrics)"},
		&cli.StringFlag{Name: "output_dir", Usage: "the candidate folder: sample.json, manifest files, candidates/<name>/<name>_<k>.png (required)"},
	}
}

func newApp() *cli.App {
	return &cli.App{
		Name:      "sample",
		Usage:     "sample M candidates per LR image with the frozen C-SD2 or C-FLUX model (DP²O-SR's candidate sets)",
		UsageText: "sample --input_dir DATA --output_dir CANDIDATES [flags]\n   sample merge --input_dir DATA --output_dir CANDIDATES",
		Description: "Candidate k of every input is the official pipeline (resize rules, ControlNet sampling, colour fix) with a generator\n" +
			"seeded --seed + k: the noise pool is the same for every input. The candidates of an input are sampled --batch_size\n" +
			"at a time, each with its own generator. Files are written atomically and recorded in OUTPUT/manifest.I-of-N.jsonl\n" +
			"(input, seed, model, settings, prompt, file, sha256) once their batch is complete: a killed run loses at most that\n" +
			"batch, a rerun continues, and a finished set is left as it is. OUTPUT/sample.json holds the settings: a folder made\n" +
			"with others is refused, never mixed. With --num_shards 1 the run ends with the merge (OUTPUT/manifest.jsonl); with\n" +
			"more, run `sample merge` once every shard is done.",
		Flags:  append(inputFlags(), modelFlags()...),
		Action: run,
		Commands: []*cli.Command{{
			Name:  "merge",
			Usage: "check that every candidate of every input exists exactly once (files present, hashes as recorded) and write OUTPUT/manifest.jsonl",
			Description: "Reads every OUTPUT/manifest.I-of-N.jsonl. Missing, duplicated or altered candidates, records of another\n" +
				"configuration and records of inputs not in the list are errors that name them; nothing is written then.",
			Flags:  inputFlags(),
			Action: runMerge,
		}},
	}
}

func modelFlags() []cli.Flag {
	return []cli.Flag{
		&cli.StringFlag{Name: "model", Value: "sd2", Usage: "sd2 (C-SD2: DDPM, real CFG) or flux (C-FLUX: Euler, guidance embedding)"},
		&cli.StringFlag{Name: "pretrained_model_name_or_path", Usage: "base model folder (diffusers layout) or model id (default: the bundled tiny model of --model, assets/tiny-sd2 or assets/tiny-flux)"},
		&cli.StringFlag{Name: "controlnet_model_name_or_path", Usage: "the frozen ControlNet (C-SD2 / C-FLUX model.safetensors, a diffusers ControlNet folder or id; default: the bundled tiny one)"},
		&cli.IntFlag{Name: "num_candidates", Value: 0, Usage: "M, candidates per input (0: the paper's, 32 for sd2 and 64 for flux)"},
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
		&cli.IntFlag{Name: "shard", Value: 0, Usage: "this process's shard, 0 ≤ shard < num_shards (inputs are split by a hash of their name)"},
		&cli.IntFlag{Name: "num_shards", Value: 1, Usage: "number of processes sharing the inputs"},
		&cli.StringFlag{Name: "on_error", Value: "fail", Usage: "an unreadable LR image: fail (stop with an error) or skip (warn and record it in the manifest)"},
		&cli.IntFlag{Name: "threads", Value: 0, Usage: "libtorch intra-op threads on the CPU (0: libtorch's default)"},
		&cli.BoolFlag{Name: "quiet", Usage: "no progress bar"},
	}
}
