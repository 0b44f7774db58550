package torch

// #include "csrc/dp2o.h"
import "C"

// dp2oCheckpointCall is the shim's callback for Checkpoint: the forward
// pass and the recomputation of checkpointed function id. (A file with an
// //export may only declare in its preamble, hence a file of its own.)
//
//export dp2oCheckpointCall
func dp2oCheckpointCall(id C.uint64_t, call *C.dp2o_ckpt_call) *C.char {
	return ckptRun(uint64(id), call)
}
