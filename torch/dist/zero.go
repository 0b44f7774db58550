package dist

import (
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strings"

	"github.com/dp2osr/dp2o/torch"
	"github.com/dp2osr/dp2o/torch/optim"
)

// ShardedOptimizer partitions an optimizer's state over the ranks, as
// PyTorch's torch.distributed.optim.ZeroRedundancyOptimizer does (ZeRO
// stage 1): each parameter belongs to one rank, which alone keeps its
// state (AdamW's two moments: 8 bytes per float32 weight) and updates it;
// after the update each rank broadcasts its parameters' new values to the
// others. The gradients are still averaged whole on every rank (a Reducer
// or AverageGradients), so gradient clipping sees them all; the optimizer
// memory per rank falls to about 1/WorldSize.
//
// The parameters are given out as ZeroRedundancyOptimizer does: by size,
// largest first, each to the rank with the fewest elements so far. Every
// rank must build it over the same list. The updates are those of the
// unsharded optimizer, bit for bit: the owner applies the same kernel to
// the same averaged gradient, and the others copy its result.
//
// The state of a checkpoint is the unsharded optimizer's: Consolidate,
// called on every rank, gathers it on rank 0, whose StateDict then returns
// it; LoadStateDict takes a whole state on every rank and keeps the rank's
// part. So a checkpoint resumes at any world size, sharded or not.
type ShardedOptimizer struct {
	g      *Group
	params []optim.Param
	owner  []int // per parameter, the rank that updates it
	// ownerOf maps a parameter's name to its owner.
	ownerOf map[string]int
	// byRank are each rank's parameters (in the list's order), and
	// tensors their tensors, which Step broadcasts from that rank.
	byRank  [][]optim.Param
	tensors [][]*torch.Tensor
	local   optim.Optimizer
	full    *optim.State // rank 0: the state Consolidate gathered, until the next Step
	// chunkBytes bounds the state that one broadcast of Consolidate moves
	// (the receive buffers on the device).
	chunkBytes int64
}

// consolidateChunkBytes is the default ShardedOptimizer.chunkBytes.
const consolidateChunkBytes = 256 << 20

// NewShardedOptimizer partitions params over the group's ranks and builds
// this rank's optimizer over its part with build (for example
// optim.NewAdamW with the run's hyper-parameters). In a group of one it
// wraps build(params).
func (g *Group) NewShardedOptimizer(params []optim.Param, build func([]optim.Param) (optim.Optimizer, error)) (*ShardedOptimizer, error) {
	if g == nil || build == nil {
		return nil, errors.New("dist: sharded optimizer: nil group or builder")
	}
	world := g.WorldSize()
	z := &ShardedOptimizer{g: g, params: params, ownerOf: map[string]int{}, byRank: make([][]optim.Param, world),
		tensors: make([][]*torch.Tensor, world), chunkBytes: consolidateChunkBytes}
	sizes := make([]int64, len(params))
	for i, p := range params {
		if p.Tensor == nil || p.Tensor.Closed() {
			return nil, fmt.Errorf("dist: sharded optimizer: parameter %q is nil or closed", p.Name)
		}
		if _, dup := z.ownerOf[p.Name]; dup {
			return nil, fmt.Errorf("dist: sharded optimizer: duplicate parameter name %q", p.Name)
		}
		z.ownerOf[p.Name] = -1
		sizes[i] = p.Tensor.Numel()
	}
	z.owner = partition(sizes, world)
	for i, p := range params {
		r := z.owner[i]
		z.ownerOf[p.Name] = r
		z.byRank[r] = append(z.byRank[r], p)
		z.tensors[r] = append(z.tensors[r], p.Tensor)
	}
	local, err := build(z.Owned())
	if err != nil {
		return nil, fmt.Errorf("dist: sharded optimizer: %w", err)
	}
	z.local = local
	return z, nil
}

// partition gives each of len(sizes) parameters to one of world ranks as
// ZeroRedundancyOptimizer._partition_parameters does: in decreasing size
// (ties in list order), each to the rank with the smallest total so far
// (ties to the lowest rank).
func partition(sizes []int64, world int) []int {
	order := make([]int, len(sizes))
	for i := range order {
		order[i] = i
	}
	sort.SliceStable(order, func(a, b int) bool { return sizes[order[a]] > sizes[order[b]] })
	total := make([]int64, world)
	owner := make([]int, len(sizes))
	for _, i := range order {
		r := 0
		for q := 1; q < world; q++ {
			if total[q] < total[r] {
				r = q
			}
		}
		owner[i] = r
		total[r] += sizes[i]
	}
	return owner
}

// Owner is the rank that updates params[i].
func (z *ShardedOptimizer) Owner(i int) int { return z.owner[i] }

// Owners is every parameter's owner, in Params' order: what a Reducer's
// ShardGradients takes.
func (z *ShardedOptimizer) Owners() []int { return append([]int(nil), z.owner...) }

// Owned lists this rank's parameters, in the order of the full list.
func (z *ShardedOptimizer) Owned() []optim.Param { return z.byRank[z.g.Rank()] }

// Local is the optimizer over this rank's parameters.
func (z *ShardedOptimizer) Local() optim.Optimizer { return z.local }

// Params are all the parameters, this rank's and the others'.
func (z *ShardedOptimizer) Params() []optim.Param { return z.params }

// LR is the current learning rate.
func (z *ShardedOptimizer) LR() float64 { return z.local.LR() }

// SetLR sets the learning rate of the next steps (the same on every rank).
func (z *ShardedOptimizer) SetLR(lr float64) { z.local.SetLR(lr) }

// BaseLR is the learning rate the optimizer was created with.
func (z *ShardedOptimizer) BaseLR() float64 { return z.local.BaseLR() }

// ZeroGrad drops every parameter's gradient.
func (z *ShardedOptimizer) ZeroGrad() {
	for _, p := range z.params {
		p.Tensor.ZeroGrad(true)
	}
}

// Step updates this rank's parameters that have a gradient, then copies
// every rank's parameters from their owners (one bucketed broadcast per
// rank). The gradients of the others' parameters are dropped first: they
// are not needed any more. It is a collective: every rank must call it.
// When the update fails on some rank, every rank returns an error (and
// the ranks' weights may then differ: resume from a checkpoint).
func (z *ShardedOptimizer) Step() error {
	z.dropFull()
	rank := z.g.Rank()
	for i, p := range z.params {
		if z.owner[i] != rank {
			p.Tensor.ZeroGrad(true)
		}
	}
	err := z.local.Step()
	if z.g.WorldSize() == 1 {
		return err
	}
	// Every rank learns whether any update failed before the broadcasts,
	// rather than waiting in them for a rank that left.
	anyFailed, ferr := z.g.Any(err != nil)
	switch {
	case ferr != nil:
		return errors.Join(err, fmt.Errorf("dist: sharded optimizer: %w", ferr))
	case err != nil:
		return fmt.Errorf("dist: sharded optimizer: rank %d: %w", rank, err)
	case anyFailed:
		return errors.New("dist: sharded optimizer: another rank's update failed")
	}
	for r, ts := range z.tensors {
		if len(ts) == 0 {
			continue // r owns nothing, as every rank knows
		}
		if err := z.g.BroadcastFrom(r, ts); err != nil {
			return fmt.Errorf("dist: sharded optimizer: the parameters of rank %d: %w", r, err)
		}
	}
	return nil
}

// stateEntry describes one tensor of a rank's state to the others.
type stateEntry struct {
	Key   string  `json:"key"`
	DType string  `json:"dtype"` // safetensors code
	Shape []int64 `json:"shape"`
}

// manifest is what a rank publishes in the store before Consolidate's
// broadcasts: its state's tensors, or why it has none.
type manifest struct {
	Entries []stateEntry `json:"entries"`
	Error   string       `json:"error,omitempty"`
}

// Consolidate gathers the whole optimizer state on rank 0, for its
// StateDict (ZeroRedundancyOptimizer.consolidate_state_dict(to=0)). It is
// a collective: every rank must call it, after the last Step and before
// rank 0's StateDict. Each rank publishes the list of its state's tensors
// in the group's store, then each rank's tensors are broadcast from it in
// chunks of a bounded size; rank 0 keeps CPU copies, the others drop what
// they receive.
func (z *ShardedOptimizer) Consolidate() (err error) {
	z.dropFull()
	local, lerr := z.local.StateDict()
	if z.g.WorldSize() == 1 {
		if lerr != nil {
			return fmt.Errorf("dist: sharded optimizer: %w", lerr)
		}
		z.full = local
		return nil
	}
	defer local.Close() // nil-safe; rank 0 moves its tensors out first
	rank, world := z.g.Rank(), z.g.WorldSize()
	gen := z.g.nextExchange()
	mine := manifest{}
	if lerr != nil {
		mine.Error = lerr.Error()
	} else {
		mine.Entries = entriesOf(local)
	}
	b, err := json.Marshal(mine)
	if err != nil {
		return fmt.Errorf("dist: sharded optimizer: %w", err)
	}
	key := func(r int) string { return fmt.Sprintf("dp2o/zero/consolidate/%d/rank%d", gen, r) }
	if err := z.g.StoreSet(key(rank), b); err != nil {
		return fmt.Errorf("dist: sharded optimizer: publishing rank %d's state: %w", rank, err)
	}
	all := make([]manifest, world)
	var failed []string
	for r := range world {
		b, err := z.g.StoreGet(key(r))
		if err != nil {
			return fmt.Errorf("dist: sharded optimizer: rank %d's state: %w", r, err)
		}
		if err := json.Unmarshal(b, &all[r]); err != nil {
			return fmt.Errorf("dist: sharded optimizer: rank %d's state: %w", r, err)
		}
		if all[r].Error != "" {
			failed = append(failed, fmt.Sprintf("rank %d: %s", r, all[r].Error))
		}
	}
	if len(failed) > 0 {
		return fmt.Errorf("dist: sharded optimizer: copying the state: %s", strings.Join(failed, "; "))
	}
	var full *optim.State
	if rank == 0 {
		full = &optim.State{Tensors: map[string]*torch.Tensor{}, Metadata: local.Metadata}
		for k, t := range local.Tensors {
			full.Tensors[k] = t
		}
		local.Tensors = nil
		defer func() {
			if err != nil {
				full.Close()
			}
		}()
	}
	for r := 1; r < world; r++ {
		if err := z.receive(r, all[r].Entries, local, full); err != nil {
			return fmt.Errorf("dist: sharded optimizer: the state of rank %d: %w", r, err)
		}
	}
	if rank == 0 {
		z.full = full
	}
	return nil
}

// entriesOf lists a state's tensors by dtype, then key: a chunk's tensors
// then share few buckets.
func entriesOf(s *optim.State) []stateEntry {
	es := make([]stateEntry, 0, len(s.Tensors))
	for k, t := range s.Tensors {
		es = append(es, stateEntry{Key: k, DType: t.DType().SafetensorsCode(), Shape: t.Shape()})
	}
	slices.SortFunc(es, func(a, b stateEntry) int {
		if c := strings.Compare(a.DType, b.DType); c != 0 {
			return c
		}
		return strings.Compare(a.Key, b.Key)
	})
	return es
}

// receive broadcasts rank r's state tensors (es, which r holds in local)
// in chunks of at most chunkBytes; rank 0 adds CPU copies to full.
func (z *ShardedOptimizer) receive(r int, es []stateEntry, local, full *optim.State) error {
	dev := z.g.Device() // NCCL's GPU, Gloo's CPU
	for lo := 0; lo < len(es); {
		hi, bytes := lo, int64(0)
		for hi < len(es) && (hi == lo || bytes < z.chunkBytes) {
			dt, err := torch.DTypeFromSafetensors(es[hi].DType)
			if err != nil {
				return err
			}
			bytes += numel(es[hi].Shape) * int64(dt.Size())
			hi++
		}
		if err := z.receiveChunk(r, es[lo:hi], dev, local, full); err != nil {
			return err
		}
		lo = hi
	}
	return nil
}

func (z *ShardedOptimizer) receiveChunk(r int, es []stateEntry, dev torch.Device, local, full *optim.State) (err error) {
	defer torch.Recover(&err)
	s := torch.NewScope()
	defer s.Close()
	ts := make([]*torch.Tensor, len(es))
	for i, e := range es {
		if z.g.Rank() == r {
			t, ok := local.Tensors[e.Key]
			if !ok {
				torch.Errorf("dist", "state tensor %s vanished", e.Key)
			}
			ts[i] = t.ToDevice(dev).Contiguous()
			continue
		}
		dt, err := torch.DTypeFromSafetensors(e.DType)
		if err != nil {
			return err
		}
		ts[i] = torch.Empty(e.Shape, dt, dev)
	}
	if err := z.g.BroadcastFrom(r, ts); err != nil {
		return err
	}
	if full == nil {
		return nil
	}
	for i, e := range es {
		if _, dup := full.Tensors[e.Key]; dup {
			return fmt.Errorf("two ranks hold the state %s", e.Key)
		}
		if dev.IsCUDA() {
			full.Tensors[e.Key] = torch.Unscope(ts[i].ToDevice(torch.CPU)) // a copy
		} else {
			full.Tensors[e.Key] = torch.Unscope(ts[i])
		}
	}
	return nil
}

func numel(shape []int64) int64 {
	n := int64(1)
	for _, d := range shape {
		n *= d
	}
	return n
}

// StateDict returns the whole state that Consolidate gathered, on rank 0,
// and hands it over (the caller closes it; a second call needs another
// Consolidate). In a group of one it is the optimizer's StateDict.
func (z *ShardedOptimizer) StateDict() (*optim.State, error) {
	if z.g.WorldSize() == 1 && z.full == nil {
		return z.local.StateDict()
	}
	if z.g.Rank() != 0 {
		return nil, fmt.Errorf("dist: sharded optimizer: rank %d: only rank 0 holds the consolidated state", z.g.Rank())
	}
	if z.full == nil {
		return nil, errors.New("dist: sharded optimizer: call Consolidate on every rank, after the last Step, before StateDict")
	}
	st := z.full
	z.full = nil
	return st, nil
}

// LoadStateDict restores a whole (unsharded) state, as saved by an
// optimizer of the same kind at any world size: every rank passes the same
// state, or the part of it that KeepsState selects, and keeps the part of
// its parameters. A key naming no parameter is an error.
func (z *ShardedOptimizer) LoadStateDict(s *optim.State) error {
	if s == nil {
		return errors.New("dist: sharded optimizer: nil state")
	}
	z.dropFull()
	var unknown []string
	for _, k := range s.Keys() {
		if _, ok := z.keyOwner(k); !ok {
			unknown = append(unknown, k)
		}
	}
	if len(unknown) > 0 {
		return fmt.Errorf("dist: sharded optimizer: state has unexpected keys: %s", strings.Join(unknown, ", "))
	}
	part := s.Part(func(k string) bool { r, _ := z.keyOwner(k); return r == z.g.Rank() })
	if err := z.local.LoadStateDict(part); err != nil {
		return fmt.Errorf("dist: sharded optimizer: %w", err)
	}
	return nil
}

// keyOwner is the owner of the parameter a state key ("<param>.<field>")
// names, and whether it names one.
func (z *ShardedOptimizer) keyOwner(key string) (int, bool) {
	i := strings.LastIndexByte(key, '.')
	if i <= 0 {
		return -1, false
	}
	r, ok := z.ownerOf[key[:i]]
	return r, ok
}

// KeepsState reports whether LoadStateDict keeps the state tensor key on
// this rank: one of its parameters' state, or a key naming no parameter
// (which LoadStateDict refuses). With it optim.LoadStateFile reads the
// rank's part of a saved state, not all of it.
func (z *ShardedOptimizer) KeepsState(key string) bool {
	r, ok := z.keyOwner(key)
	return !ok || r == z.g.Rank()
}

// Close frees this rank's optimizer state (not the parameters).
func (z *ShardedOptimizer) Close() {
	z.dropFull()
	if z.local != nil {
		z.local.Close()
	}
}

func (z *ShardedOptimizer) dropFull() {
	if z.full != nil {
		z.full.Close()
		z.full = nil
	}
}

var (
	_ optim.Optimizer    = (*ShardedOptimizer)(nil)
	_ optim.PartialState = (*ShardedOptimizer)(nil)
)
