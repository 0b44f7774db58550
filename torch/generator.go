package torch

// #include "csrc/dp2o.h"
import "C"

import (
	"runtime"
	"sync"
)

// Generator wraps a libtorch random generator (CPU or CUDA). Seeded like
// torch.Generator(device).manual_seed(seed) and drawn in the same order, it
// gives the same numbers as PyTorch on the same libtorch. A nil *Generator
// means libtorch's default generator of the device.
type Generator struct {
	mu  sync.Mutex
	p   C.dp2o_gen
	dev Device
}

// NewGenerator creates a generator on dev seeded with seed.
func NewGenerator(dev Device, seed uint64) (*Generator, error) {
	var p C.dp2o_gen
	if err := errOf(C.dp2o_gen_new(C.int(dev.Type), C.int(dev.Index), C.uint64_t(seed), &p), "generator"); err != nil {
		return nil, err
	}
	g := &Generator{p: p, dev: dev}
	runtime.AddCleanup(g, func(p C.dp2o_gen) { C.dp2o_gen_free(p) }, p)
	return g, nil
}

// MustGenerator is NewGenerator that panics with a *Error.
func MustGenerator(dev Device, seed uint64) *Generator {
	g, err := NewGenerator(dev, seed)
	if err != nil {
		panic(err)
	}
	return g
}

// Device is the generator's device.
func (g *Generator) Device() Device { return g.dev }

// ManualSeed reseeds the generator.
func (g *Generator) ManualSeed(seed uint64) error {
	err := errOf(C.dp2o_gen_manual_seed(g.p, C.uint64_t(seed)), "manual_seed")
	runtime.KeepAlive(g)
	return err
}

// Seed is the generator's initial seed.
func (g *Generator) Seed() uint64 {
	var s C.uint64_t
	must(C.dp2o_gen_seed(g.p, &s), "seed")
	runtime.KeepAlive(g)
	return uint64(s)
}

// State returns the generator's state as a uint8 CPU tensor (get_state).
func (g *Generator) State() *Tensor {
	var out C.dp2o_tensor
	err := C.dp2o_gen_get_state(g.p, &out)
	runtime.KeepAlive(g)
	must(err, "get_state")
	return newTensor(out)
}

// SetState restores a state returned by State.
func (g *Generator) SetState(state *Tensor) error {
	err := errOf(C.dp2o_gen_set_state(g.p, state.ptr()), "set_state")
	runtime.KeepAlive(g)
	runtime.KeepAlive(state)
	return err
}

func (g *Generator) cptr() C.dp2o_gen {
	if g == nil {
		return nil
	}
	return g.p
}

// ManualSeed seeds libtorch's default CPU and CUDA generators, like torch.manual_seed.
func ManualSeed(seed uint64) error { return errOf(C.dp2o_manual_seed(C.uint64_t(seed)), "manual_seed") }
