// Package torch is a thin, safe Go binding over libtorch (the C++ core of
// PyTorch), through a flat C ABI shim built by the repository's Makefile
// (build/libdp2otorch.so).
//
// Tensors are *Tensor values owning one libtorch handle each. They are freed
// deterministically, by Close or by the Scope they were made in:
//
//	s := torch.NewScope()
//	defer s.Close()                       // frees every tensor made below…
//	y := x.Matmul(w).Add(b).Gelu()
//	return s.Keep(y)                      // …except the ones kept
//
// Scopes are per goroutine. A runtime cleanup frees tensors that escape both
// as a safety net only, and lazily: it is registered for a tensor still open
// when a newer unscoped tensor takes its slot in a 1,024-slot table (hashed
// by handle) or a garbage collection sweeps the table, so a forgotten tensor
// goes at the second collection after it was made, at the latest.
// LiveTensors and LiveBytes count what is alive.
//
// Ops have PyTorch's semantics and names (Add, Matmul, Conv2d, Softmax, …);
// they are generated from the tables in torch/ops by torch/internal/opgen.
// A failing op panics with a *Error carrying libtorch's message, so model
// code reads like math; functions that take user input convert that panic
// into a returned error with Recover or Try:
//
//	func (m *Model) Run(x *torch.Tensor) (y *torch.Tensor, err error) {
//		defer torch.Recover(&err)
//		return m.forward(x), nil
//	}
//
// Random numbers come from a Generator (CPU or CUDA) seeded like
// torch.Generator().manual_seed: drawn in the same order they are the same
// numbers PyTorch gives on the same libtorch. Autograd (SetRequiresGrad,
// Backward, Grad), NoGrad and Autocast follow PyTorch; the latter two lock
// the goroutine to its OS thread because libtorch keeps that state per
// thread. Checkpoint is torch.utils.checkpoint: a Go function whose
// activations are recomputed in the backward pass instead of kept.
package torch
