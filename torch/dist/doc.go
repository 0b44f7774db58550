// Package dist runs data-parallel work on libtorch's distributed engine
// (c10d): one process per GPU (or per CPU worker), launched by torchrun or
// by hand, meeting through a TCP store (or a file store) and talking through
// a process group, Gloo on CPU or NCCL on CUDA.
//
// A training program calls it like this:
//
//	g, err := dist.FromEnv() // RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT
//	if err != nil { ... }
//	defer g.Close()
//	if err := g.BroadcastParameters(params); err != nil { ... } // rank 0's weights everywhere
//	for step := range steps {
//		batch, err := dist.Batch(g, globalBatch) // this rank's share of the step's items
//		loss := ...; loss.Backward(nil)
//		if err := g.AverageGradients(params); err != nil { ... } // mean over the ranks
//		opt.Step()
//		if g.IsMain() { /* checkpoints and logs */ }
//	}
//
// AverageGradients reduces after the backward pass (an Averager wraps it
// in the protocol below). A Reducer (NewReducer) instead starts each
// bucket's all-reduce from autograd hooks while the backward pass still
// runs, as DistributedDataParallel does. Both take Prepare before each
// backward pass, Finish after the step's last one, and Abort instead of
// Finish when the rank's step failed, which fails it on every rank.
//
// A ShardedOptimizer (NewShardedOptimizer) keeps on each rank the state of
// its share of the parameters only, as PyTorch's ZeroRedundancyOptimizer
// (ZeRO stage 1): each rank updates its parameters and broadcasts them;
// Consolidate gathers the whole state on rank 0 for a checkpoint. A
// Reducer given the optimizer's owners (ShardGradients) shards the
// gradients too (ZeRO stage 2): each backward pass reduces each bucket to
// its owner, which alone keeps it; ClipGradNorm then takes the norm over
// the ranks' shares.
//
// Without torchrun's environment FromEnv returns a group of one process whose
// collectives do nothing, so the same program runs unchanged on one device.
//
// Every collective has a timeout (Options.Timeout, SetTimeout) and returns
// an error, rather than hanging, when a peer is gone; the group is then out
// of step and must be closed. Collectives must be called in the same order
// on every rank. A libtorch without a backend (no Gloo headers at build
// time, or NCCL asked of a CPU build) makes New return an error saying so.
package dist
