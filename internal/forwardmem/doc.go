// Package forwardmem holds one benchmark, BenchmarkForwardMemory: the peak
// memory of each full-size reward scorer's forward (labelling runs them on
// whole candidate groups), on the CPU in float32 with zero weights (the
// memory does not depend on their values); diffusion/vae has the same
// benchmark for the VAE:
//
//	go test ./internal/forwardmem -run '^$' -bench ForwardMemory -benchtime 1x
//
// DP2O_BENCH_BATCH images (default 1) of DP2O_BENCH_SIZE² pixels (default
// 512, DP²O-SR's process size). A forward that held every layer's
// intermediates until it returned would show here as a peak growing with
// depth.
package forwardmem
