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
package preference
