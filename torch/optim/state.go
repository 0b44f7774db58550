package optim

import (
	"encoding/json"
	"fmt"
	"sort"
	"strconv"
	"strings"

	"github.com/dp2osr/dp2o/torch"
	"github.com/dp2osr/dp2o/torch/safetensors"
)

// State is an optimizer's state as CPU tensors keyed
// "<param>.<field>" (fields: step, exp_avg, exp_avg_sq for AdamW;
// step, momentum_buffer for SGD), plus metadata naming the optimizer, its
// hyper-parameters and current learning rate. It owns its tensors: Close
// frees them.
//
// A state opened with OpenState holds a saved file instead, whose tensors
// are read when an optimizer restores them, one at a time: Tensors is then
// empty, and Keys lists what the file holds.
type State struct {
	Tensors  map[string]*torch.Tensor
	Metadata map[string]string

	file     *safetensors.File // OpenState: the tensors not in Tensors
	fileKeys map[string]bool   // the file's keys the state keeps
	borrowed bool              // a Part: shares its tensors and file, frees nothing
}

// Close frees the state's tensors (and closes its file).
func (s *State) Close() {
	if s == nil {
		return
	}
	if !s.borrowed {
		for _, t := range s.Tensors {
			t.Close()
		}
		if s.file != nil {
			s.file.Close()
		}
	}
	s.Tensors, s.file, s.fileKeys = nil, nil, nil
}

// OpenState opens a state written by State.Save without reading its
// tensors: an optimizer's LoadStateDict reads each when it restores it and
// frees it after, so that resuming holds one tensor of the state in host
// memory at a time, not all of it. keep selects the keys the state holds
// (nil: all). Close the state after loading it.
func OpenState(path string, keep func(key string) bool) (*State, error) {
	f, err := safetensors.Open(path)
	if err != nil {
		return nil, err
	}
	st := &State{Tensors: map[string]*torch.Tensor{}, Metadata: f.Metadata(), file: f, fileKeys: map[string]bool{}}
	for _, n := range f.Names() {
		if keep == nil || keep(n) {
			st.fileKeys[n] = true
		}
	}
	return st, nil
}

// PartialState is implemented by an optimizer that restores only a part
// of a saved state (a rank of a dist.ShardedOptimizer): KeepsState says
// which keys, so that LoadStateFile reads no other.
type PartialState interface {
	KeepsState(key string) bool
}

// LoadStateFile restores opt from a state file written by State.Save,
// reading each tensor as opt restores it (OpenState), and only the part a
// PartialState optimizer keeps.
func LoadStateFile(opt Optimizer, path string) error {
	var keep func(string) bool
	if p, ok := opt.(PartialState); ok {
		keep = p.KeepsState
	}
	st, err := OpenState(path, keep)
	if err != nil {
		return err
	}
	defer st.Close()
	return opt.LoadStateDict(st)
}

// Keys lists the state's tensor keys, sorted: those of Tensors and, for a
// state opened with OpenState, those of its file.
func (s *State) Keys() []string {
	ks := make([]string, 0, len(s.Tensors)+len(s.fileKeys))
	for k := range s.Tensors {
		ks = append(ks, k)
	}
	for k := range s.fileKeys {
		if _, ok := s.Tensors[k]; !ok {
			ks = append(ks, k)
		}
	}
	sort.Strings(ks)
	return ks
}

// Part is the state restricted to the keys keep accepts. It shares the
// state's tensors and file: closing it frees nothing, and it is valid
// while the state is.
func (s *State) Part(keep func(key string) bool) *State {
	p := &State{Tensors: map[string]*torch.Tensor{}, Metadata: s.Metadata, file: s.file, fileKeys: map[string]bool{}, borrowed: true}
	for k, t := range s.Tensors {
		if keep(k) {
			p.Tensors[k] = t
		}
	}
	for k := range s.fileKeys {
		if keep(k) {
			p.fileKeys[k] = true
		}
	}
	return p
}

// tensor returns key's tensor, whether the state has it, and a release
// that frees it when it was read from the file for this call.
func (s *State) tensor(key string) (*torch.Tensor, func(), bool, error) {
	if t, ok := s.Tensors[key]; ok {
		return t, func() {}, true, nil
	}
	if s.file == nil || !s.fileKeys[key] {
		return nil, nil, false, nil
	}
	info, _ := s.file.Info(key)
	dt, err := torch.DTypeFromSafetensors(string(info.DType))
	if err != nil {
		return nil, nil, true, fmt.Errorf("%s: %s: %w", s.file.Path(), key, err)
	}
	b, err := s.file.Data(key)
	if err != nil {
		return nil, nil, true, err
	}
	t, err := torch.FromBytes(b, dt, info.Shape)
	s.file.Release(key) // copied: the file's pages may leave the resident set
	if err != nil {
		return nil, nil, true, fmt.Errorf("%s: %s: %w", s.file.Path(), key, err)
	}
	t = torch.Unscope(t)
	return t, t.Close, true, nil
}

// Save writes the state to a safetensors file (atomically: a temporary file
// renamed into place), copying one tensor at a time out of libtorch.
func (s *State) Save(path string) (err error) {
	defer torch.Recover(&err)
	var ts []safetensors.Tensor
	for _, name := range s.Keys() {
		var dt torch.DType
		var shape []int64
		if t, ok := s.Tensors[name]; ok {
			dt, shape = t.DType(), t.Shape()
		} else {
			info, _ := s.file.Info(name)
			if dt, err = torch.DTypeFromSafetensors(string(info.DType)); err != nil {
				return err
			}
			shape = info.Shape
		}
		ts = append(ts, safetensors.Tensor{
			Name: name, DType: safetensors.DType(dt.SafetensorsCode()), Shape: shape,
			Source: func() (b []byte, err error) {
				t, release, _, err := s.tensor(name)
				if err != nil {
					return nil, err
				}
				defer release()
				err = torch.Try(func() { b = t.Bytes() })
				return b, err
			},
		})
	}
	return safetensors.Save(path, ts, s.Metadata)
}

// LoadState reads a state written by State.Save, every tensor into
// memory (OpenState reads them as they are restored).
func LoadState(path string) (st *State, err error) {
	f, err := safetensors.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	st = &State{Tensors: map[string]*torch.Tensor{}, Metadata: f.Metadata()}
	defer func() {
		if err != nil {
			st.Close()
			st = nil
		}
	}()
	for _, n := range f.Names() {
		info, _ := f.Info(n)
		dt, err := torch.DTypeFromSafetensors(string(info.DType))
		if err != nil {
			return nil, fmt.Errorf("%s: %s: %w", path, n, err)
		}
		b, err := f.Data(n)
		if err != nil {
			return nil, err
		}
		t, err := torch.FromBytes(b, dt, info.Shape)
		if err != nil {
			return nil, fmt.Errorf("%s: %s: %w", path, n, err)
		}
		st.Tensors[n] = torch.Unscope(t)
	}
	return st, nil
}

// has reports whether the state holds key.
func (s *State) has(key string) bool {
	if _, ok := s.Tensors[key]; ok {
		return true
	}
	return s.fileKeys[key]
}

// with runs f on key's tensor, read from the file when the state is
// opened from one and freed right after.
func (s *State) with(key string, f func(*torch.Tensor) error) error {
	t, release, ok, err := s.tensor(key)
	if err != nil {
		return err
	}
	if !ok {
		return fmt.Errorf("optim: state has no %s", key)
	}
	defer release()
	return f(t)
}

// cpuCopy is a detached contiguous CPU copy of t that no scope owns.
func cpuCopy(t *torch.Tensor) *torch.Tensor {
	return torch.Unscope(torch.Scoped(func() *torch.Tensor {
		return t.Detach().ToDevice(torch.CPU).Clone()
	}))
}

// restore copies a saved tensor into a new tensor shaped, typed and placed
// like param, checking the shape.
func restore(key string, saved, like *torch.Tensor) (*torch.Tensor, error) {
	if fmt.Sprint(saved.Shape()) != fmt.Sprint(like.Shape()) {
		return nil, fmt.Errorf("optim: state %s has shape %v, parameter %v", key, saved.Shape(), like.Shape())
	}
	out := torch.Unscope(like.ZerosLike())
	out.Copy_(saved)
	return out, nil
}

func stepTensor(n int64) *torch.Tensor {
	return torch.Unscope(torch.ScalarOf(float64(n), torch.Int64, torch.CPU))
}

// checkKeys verifies that the state holds exactly the fields expected for
// the parameters that have state, and names the first offenders.
func checkKeys(s *State, names map[string]bool, fields []string) error {
	var unknown []string
	for _, k := range s.Keys() {
		i := strings.LastIndexByte(k, '.')
		if i < 0 || !names[k[:i]] || !contains(fields, k[i+1:]) {
			unknown = append(unknown, k)
		}
	}
	if len(unknown) > 0 {
		sort.Strings(unknown)
		return fmt.Errorf("optim: state has unexpected keys: %s", strings.Join(unknown, ", "))
	}
	return nil
}

func contains(xs []string, x string) bool {
	for _, v := range xs {
		if v == x {
			return true
		}
	}
	return false
}

func paramNames(ps []Param) map[string]bool {
	m := map[string]bool{}
	for _, p := range ps {
		m[p.Name] = true
	}
	return m
}

func checkKind(s *State, kind string) error {
	if got := s.Metadata["optimizer"]; got != kind {
		return fmt.Errorf("optim: state is for optimizer %q, not %q", got, kind)
	}
	return nil
}

func metaFloat(s *State, key string) (float64, error) {
	v, err := strconv.ParseFloat(s.Metadata[key], 64)
	if err != nil {
		return 0, fmt.Errorf("optim: state metadata %q: %w", key, err)
	}
	return v, nil
}

// StateDict copies the AdamW state to CPU tensors.
func (o *AdamW) StateDict() (st *State, err error) {
	defer torch.Recover(&err)
	cfg, _ := json.Marshal(o.cfg)
	st = &State{Tensors: map[string]*torch.Tensor{}, Metadata: map[string]string{
		"optimizer": "adamw", "config": string(cfg), "lr": strconv.FormatFloat(o.lr, 'g', -1, 64),
	}}
	for name, s := range o.state {
		st.Tensors[name+".step"] = stepTensor(s.step)
		st.Tensors[name+".exp_avg"] = cpuCopy(s.expAvg)
		st.Tensors[name+".exp_avg_sq"] = cpuCopy(s.expAvgSq)
	}
	return st, nil
}

// LoadStateDict replaces the AdamW state (and the current learning rate)
// with a saved one. The hyper-parameters stay those of the optimizer.
func (o *AdamW) LoadStateDict(s *State) (err error) {
	defer torch.Recover(&err)
	if err := checkKind(s, "adamw"); err != nil {
		return err
	}
	if err := checkKeys(s, paramNames(o.params), []string{"step", "exp_avg", "exp_avg_sq"}); err != nil {
		return err
	}
	lr, err := metaFloat(s, "lr")
	if err != nil {
		return err
	}
	state := map[string]*adamState{}
	fail := func(e error) error {
		for _, st := range state {
			st.expAvg.Close()
			st.expAvgSq.Close()
		}
		return e
	}
	for _, p := range o.params {
		okS, okM, okV := s.has(p.Name+".step"), s.has(p.Name+".exp_avg"), s.has(p.Name+".exp_avg_sq")
		if !okS && !okM && !okV {
			continue // never updated
		}
		if !okS || !okM || !okV {
			return fail(fmt.Errorf("optim: state of %q is incomplete", p.Name))
		}
		st := &adamState{}
		if err := s.with(p.Name+".step", func(t *torch.Tensor) error { st.step = t.ItemInt(); return nil }); err != nil {
			return fail(err)
		}
		if err := s.with(p.Name+".exp_avg", func(t *torch.Tensor) (err error) {
			st.expAvg, err = restore(p.Name+".exp_avg", t, p.Tensor)
			return err
		}); err != nil {
			return fail(err)
		}
		if err := s.with(p.Name+".exp_avg_sq", func(t *torch.Tensor) (err error) {
			st.expAvgSq, err = restore(p.Name+".exp_avg_sq", t, p.Tensor)
			return err
		}); err != nil {
			st.expAvg.Close()
			return fail(err)
		}
		state[p.Name] = st
	}
	o.Close()
	o.state = state
	o.lr = lr
	return nil
}

// StateDict copies the SGD state (momentum buffers, step counts) to CPU tensors.
func (o *SGD) StateDict() (st *State, err error) {
	defer torch.Recover(&err)
	cfg, _ := json.Marshal(o.cfg)
	st = &State{Tensors: map[string]*torch.Tensor{}, Metadata: map[string]string{
		"optimizer": "sgd", "config": string(cfg), "lr": strconv.FormatFloat(o.lr, 'g', -1, 64),
	}}
	for name, n := range o.steps {
		st.Tensors[name+".step"] = stepTensor(n)
	}
	for name, b := range o.bufs {
		st.Tensors[name+".momentum_buffer"] = cpuCopy(b)
	}
	return st, nil
}

// LoadStateDict replaces the SGD state (and the current learning rate).
func (o *SGD) LoadStateDict(s *State) (err error) {
	defer torch.Recover(&err)
	if err := checkKind(s, "sgd"); err != nil {
		return err
	}
	if err := checkKeys(s, paramNames(o.params), []string{"step", "momentum_buffer"}); err != nil {
		return err
	}
	lr, err := metaFloat(s, "lr")
	if err != nil {
		return err
	}
	bufs, steps := map[string]*torch.Tensor{}, map[string]int64{}
	fail := func(e error) error {
		for _, b := range bufs {
			b.Close()
		}
		return e
	}
	for _, p := range o.params {
		if s.has(p.Name + ".step") {
			if err := s.with(p.Name+".step", func(t *torch.Tensor) error { steps[p.Name] = t.ItemInt(); return nil }); err != nil {
				return fail(err)
			}
		}
		if s.has(p.Name + ".momentum_buffer") {
			if err := s.with(p.Name+".momentum_buffer", func(t *torch.Tensor) (err error) {
				bufs[p.Name], err = restore(p.Name+".momentum_buffer", t, p.Tensor)
				if err != nil {
					delete(bufs, p.Name)
				}
				return err
			}); err != nil {
				return fail(err)
			}
		}
	}
	o.Close()
	o.bufs, o.steps, o.lr = bufs, steps, lr
	return nil
}
