// Package sample makes DP²O-SR's candidate sets: for every LR input, M
// outputs of the frozen model (C-SD2 or C-FLUX) with the seeds of a fixed
// noise pool (SPEC §5, §2.7), written as PNG files with a manifest.
//
// # Candidate folder
//
//	DIR/sample.json                       the Config: settings, noise pool, batch size
//	DIR/candidates/<id>/<id>_<k>.png      candidate k of input <id> (seed Seeds[k])
//	DIR/manifest.<i>-of-<n>.jsonl         one Record per candidate, per shard
//	DIR/manifest.jsonl                    the merged manifest (Merge)
//
// A Record holds the input (id, LR and HR files), the candidate index and
// seed, the model and its settings, the prompt, the file and its SHA-256.
//
// # Batches, resuming, shards
//
// SD2 and FLUX sample the candidates of one input in batches (the prompt
// is encoded once, the networks run on the whole batch), each candidate
// drawing its noise from its own generator, so a batch of one is the
// official pipeline with that seed. Run splits every input's candidates
// into fixed batches of Config.BatchSize; a batch is written (atomic
// renames) and then recorded in its shard's manifest with one synced
// append. A killed run loses at most the batch in flight, which a rerun
// samples again whole, so resumed, sharded and uninterrupted runs give the
// same bytes. Inputs are split among shards by a hash of their id; Merge
// checks that every candidate exists exactly once with its recorded hash.
//
// Open loads the model a Settings names (C-SD2 or C-FLUX) as a Sampler;
// preference/label scores a merged set and preference/eval evaluates it.
package sample
