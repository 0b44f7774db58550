// Command train fine-tunes a C-SD2 or C-FLUX ControlNet with DP²O-SR's
// HPO-weighted Diffusion-DPO loss on a pair file (examples/pairs), turning
// it into a DP²O-SD2 / DP²O-FLUX ControlNet (package preference).
//
//	go run ./examples/train --model sd2 --pairs pairs.json --output_dir dpo-sd2 \
//	    --max_train_steps 1000 --checkpointing_steps 100
//
// The flags are those of diffusers' training scripts. The base model, VAE
// and text encoders are frozen; the ControlNet trains in float32 against a
// frozen copy of its initial weights (π_ref). Every --checkpointing_steps
// (and at the end) output_dir/checkpoint-<step>/ holds the ControlNet as a
// flat model.safetensors in the released layout (examples/sr and the
// official scripts load it as is), the optimizer state, the generator
// state and the data position; --resume_from_checkpoint latest continues
// to the same numbers as an uninterrupted run. output_dir also gets
// model.safetensors (the final ControlNet), train_log.csv (one row per
// step) and train_curves.png (loss and implicit accuracy).
//
// Launched by torchrun (one process per device: RANK, WORLD_SIZE, ...),
// the ranks form a process group (package torch/dist): rank 0's ControlNet
// is broadcast, each step's global batch of train_batch_size ×
// gradient_accumulation_steps × WORLD_SIZE pairs is split over the ranks,
// gradients are averaged before clipping, and rank 0 alone writes the
// outputs. Without torchrun's environment it is one process, as above.
package main

import (
	"fmt"
	"os"

	"github.com/urfave/cli/v2"

	"github.com/dp2osr/dp2o/preference"
)

func main() {
	if err := newApp().Run(os.Args); err != nil {
		fmt.Fprintln(os.Stderr, "train:", err)
		os.Exit(1)
	}
}

func newApp() *cli.App {
	return &cli.App{
		Name:      "train",
		Usage:     "DP²O-SR preference fine-tuning (HPO-weighted Diffusion-DPO) of a C-SD2 or C-FLUX ControlNet",
		UsageText: "train --model sd2|flux --pairs PAIRS.json --output_dir DIR [options]",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "model", Value: "sd2", Usage: "backbone: sd2 (C-SD2, DDPM ε target) or flux (C-FLUX, flow-matching velocity target)"},
			&cli.StringFlag{Name: "pretrained_model_name_or_path", Usage: "base model folder (diffusers layout); default: the bundled tiny model of --model"},
			&cli.StringFlag{Name: "controlnet_model_name_or_path", Usage: "the ControlNet to fine-tune (a flat model.safetensors, the released layout); default: the bundled tiny one"},
			&cli.StringFlag{Name: "pairs", Usage: "the pair file (examples/pairs); relative image paths are taken from its folder (required)", Required: true},
			&cli.StringFlag{Name: "output_dir", Value: "dpo-output", Usage: "where checkpoints, the final model.safetensors, the CSV log and the curves go"},
			&cli.Float64Flag{Name: "learning_rate", Value: 2e-5, Usage: "AdamW learning rate (the paper: 2e-5)"},
			&cli.Float64Flag{Name: "beta_dpo", Value: 5000, Usage: "DPO β (the paper: 5000)"},
			&cli.IntFlag{Name: "train_batch_size", Value: 1, Usage: "pairs per batch, per process under torchrun (each pair runs its winner and loser)"},
			&cli.IntFlag{Name: "gradient_accumulation_steps", Value: 1, Usage: "batches per optimizer step (the paper's 1024 pairs = batch × accumulation × GPUs)"},
			&cli.IntFlag{Name: "max_train_steps", Value: 1000, Usage: "optimizer steps to train for (the paper: 1000)"},
			&cli.IntFlag{Name: "checkpointing_steps", Value: 500, Usage: "save a checkpoint every this many steps (and at the end)"},
			&cli.StringFlag{Name: "resume_from_checkpoint", Usage: "a checkpoint folder, or latest (the newest under --output_dir; a fresh start when there is none)"},
			&cli.StringFlag{Name: "mixed_precision", Value: "no", Usage: "no, fp16 or bf16: on CUDA the frozen models (the reference ControlNet too, as in Diffusion-DPO) run in that dtype and the forward passes under autocast; the trained ControlNet keeps float32 master weights (CPU: float32)"},
			&cli.BoolFlag{Name: "gradient_checkpointing", Usage: "recompute the base model's and the ControlNet's block activations in the backward pass instead of keeping them: much less memory for about a third more compute, the same gradients"},
			&cli.Uint64Flag{Name: "seed", Value: 0, Usage: "seed of the data order, timesteps, noise and VAE samples"},
			&cli.StringFlag{Name: "lr_scheduler", Value: "constant", Usage: "constant, constant_with_warmup, linear, cosine or cosine_with_restarts"},
			&cli.IntFlag{Name: "lr_warmup_steps", Value: 0, Usage: "warm-up steps of the schedule"},
			&cli.Float64Flag{Name: "adam_beta1", Value: 0.9, Usage: "AdamW β1"},
			&cli.Float64Flag{Name: "adam_beta2", Value: 0.999, Usage: "AdamW β2"},
			&cli.Float64Flag{Name: "adam_weight_decay", Value: 1e-2, Usage: "AdamW decoupled weight decay"},
			&cli.Float64Flag{Name: "adam_epsilon", Value: 1e-8, Usage: "AdamW ε"},
			&cli.Float64Flag{Name: "max_grad_norm", Value: 1, Usage: "gradient clipping (total 2-norm; 0 turns it off)"},
			&cli.Float64Flag{Name: "guidance_scale", Value: 3.5, Usage: "FLUX: the guidance value both models get in training (the FLUX ControlNet recipe's 3.5)"},
			&cli.IntFlag{Name: "num_double_layers", Value: 4, Usage: "FLUX: double blocks of the ControlNet when no config.json is beside it"},
			&cli.IntFlag{Name: "num_single_layers", Value: 0, Usage: "FLUX: single blocks of the ControlNet when no config.json is beside it"},
			&cli.StringFlag{Name: "device", Value: "auto", Usage: "cpu, cuda, cuda:N or auto (cuda when available)"},
			&cli.BoolFlag{Name: "no_progress", Usage: "no progress bar (the CSV log is still written)"},
			&cli.StringFlag{Name: "grad_sync", Value: "overlap", Usage: "under torchrun: overlap (all-reduce gradient buckets while the backward pass runs, as DDP) or after (one bucketed all-reduce after it)"},
			&cli.BoolFlag{Name: "shard_gradients", Usage: "under torchrun, with --grad_sync overlap: also shard the gradients (ZeRO stage 2): each backward pass reduces each gradient bucket to the rank that updates its weights, which alone keeps it (C-FLUX: 5.8 GB of gradients per GPU, 0.7 on 8), for one reduce per bucket and accumulation step; implies --shard_optimizer"},
			&cli.BoolFlag{Name: "shard_optimizer", Usage: "under torchrun: each rank keeps the AdamW state of its share of the ControlNet's weights and updates them (ZeRO stage 1, as PyTorch's ZeroRedundancyOptimizer): 8 bytes per weight over the ranks instead of on each (C-FLUX: 11.5 GB per GPU, 1.5 on 8); checkpoints stay whole"},
			&cli.BoolFlag{Name: "precompute_prompts", Usage: "encode every prompt of --pairs before training (each rank a share) into --prompt_embeds_dir, then free the text encoders, as diffusers' recipes do: T5-XXL and CLIP-L leave the GPU (9.8 GB in bfloat16)"},
			&cli.StringFlag{Name: "prompt_embeds_dir", Usage: "the prompt embeddings' folder, one every rank sees (on several machines a shared file system), reused across runs of the same text encoders (default OUTPUT_DIR/prompt_embeds)"},
			&cli.Int64Flag{Name: "latent_cache_mb", Value: preference.DefaultLatentCacheBytes >> 20, Usage: "CPU memory for cached VAE posteriors of the training images, per process (least recently used go first; -1: no bound)"},
			&cli.Int64Flag{Name: "prompt_cache_mb", Value: preference.DefaultPromptCacheBytes >> 20, Usage: "CPU memory for cached prompt embeddings, per process (least recently used go first; -1: no bound)"},
		},
		Action: run,
	}
}
