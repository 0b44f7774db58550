// Package preference holds the preference half of DP²O-SR: preference
// pairs and their HPO weights built from the candidates' rewards, the pair
// file that training reads, and the HPO-weighted Diffusion-DPO loss.
//
// # Pair file
//
// BuildPairs turns groups (one LR input and its M candidates, with their
// hybrid rewards or raw metric scores) into a PairFile; Save writes it as
// JSON (atomically), LoadPairs reads and checks it. Layout (format
// "dp2o-pairs/1"):
//
//	{
//	  "format": "dp2o-pairs/1",
//	  "metrics": [{"name": "lpips", "higher_is_better": false}, ...],   // when built from raw scores
//	  "metric_kinds": ["fr", ...],                                      // one per metric
//	  "candidates_per_group": M, "top_n": N,
//	  "mu_sigma": μσ,                                                   // mean σ_g over the whole set
//	  "groups": [{"id", "lr", "hr", "prompt", "candidates": [M paths],
//	              "raw": [[M × metrics]], "reward": [M],
//	              "top": [N, best first], "bottom": [N, worst last],
//	              "gap_mean": μ_gap, "sigma": σ_g, "w_inter": w_inter}, ...],
//	  "pairs": [{"group", "winner", "loser", "w_intra", "weight"}, ...]  // groups in order, winners outer, losers inner
//	}
//
// A pair's images are groups[group].candidates[winner] and [loser]; its
// control image and prompt are the group's lr and prompt; its weight is
// w_intra·w_inter (SPEC §6). The reward arithmetic (per-group min-max,
// FR/NR halves, ranking with ties to the lower index, population σ) is
// package reward's, used as it is.
//
// # Loss
//
// DPOLoss is the weighted Diffusion-DPO loss with β (DefaultBeta), in the
// reference Diffusion-DPO form; NoiseEpsilon (SD2, DDPM ε target) and
// NoiseFlow (FLUX, velocity target) make the noised latents and targets a
// pair shares.
//
// # Training
//
// A Backbone holds the frozen base model, the trainable ControlNet (the
// policy, float32 master weights) and π_ref, a frozen deep copy of the
// policy's initial weights: SD2Backbone (UNet, DDPM noising, ε target) and
// FluxBackbone (transformer, flow interpolation on packed latents, velocity
// target). A Trainer runs on it: per Batch the doubled batch [winners;
// losers] with one timestep and one noise per pair, the reference's and the
// policy's predictions through the same kernels, DPOLoss (β, HPO weight per
// pair) with the implicit accuracy and reward margins, backward (loss /
// GradAccum), and per optimizer step clip_grad_norm_, AdamW (torch 1.13's
// rule, package optim) and the learning-rate schedule; on CUDA the
// forwards run under autocast (MixedPrecision). The forward and backward of
// a batch run on one locked OS thread, which makes them deterministic.
// The train_sd2 and train_flux fixtures check every step of it.
//
// A Loader turns a pair file into Batches: a per-epoch shuffle from
// (seed, epoch), the winner, loser (and FLUX control) images VAE-encoded
// through a cache of posterior moments keyed by the VAE's fingerprint and
// the image's SHA-256, latents sampled from them, the LR control image and
// the prompt embedding shared by the pair, and the noise levels (SD2:
// uniform t; FLUX: the recipe's logit-normal density) from a CPU generator.
// SD2Data / FluxData and NewSD2BackboneFrom / NewFluxBackboneFrom build
// both sides from the inference pipelines.
//
// Trainer.SaveCheckpoint writes a folder atomically: model.safetensors (the
// ControlNet as a flat float32 state dict, the layout DP²O-SR releases,
// which diffusion.LoadSD2, flow.LoadCFLUX and the official scripts load),
// optimizer.safetensors, random_states.safetensors (the loader's
// generator) and trainer_state.json (step, data position, seed, the
// reference's fingerprint). LoadCheckpoint restores all of it; a resumed
// run reaches the same weights, bit for bit on the CPU, as an
// uninterrupted one. examples/train is the command line.
package preference
