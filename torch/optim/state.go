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
type State struct {
	Tensors  map[string]*torch.Tensor
	Metadata map[string]string
}

// Close frees the state's tensors.
func (s *State) Close() {
	if s == nil {
		return
	}
	for _, t := range s.Tensors {
		t.Close()
	}
	s.Tensors = nil
}

// Save writes the state to a safetensors file (atomically: a temporary file
// renamed into place), copying one tensor at a time out of libtorch.
func (s *State) Save(path string) (err error) {
	defer torch.Recover(&err)
	var ts []safetensors.Tensor
	for name, t := range s.Tensors {
		ts = append(ts, safetensors.Tensor{
			Name: name, DType: safetensors.DType(t.DType().SafetensorsCode()), Shape: t.Shape(),
			Source: func() (b []byte, err error) {
				err = torch.Try(func() { b = t.Bytes() })
				return b, err
			},
		})
	}
	return safetensors.Save(path, ts, s.Metadata)
}

// LoadState reads a state written by State.Save.
func LoadState(path string) (st *State, err error) { return LoadStateKeys(path, nil) }

// LoadStateKeys reads the tensors of a state written by State.Save whose
// keys keep accepts (all of them when keep is nil), and its metadata: a
// rank of a sharded optimizer reads its part of a whole state.
func LoadStateKeys(path string, keep func(key string) bool) (st *State, err error) {
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
		if keep != nil && !keep(n) {
			continue
		}
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
	for k := range s.Tensors {
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
		step, ok := s.Tensors[p.Name+".step"]
		m, okM := s.Tensors[p.Name+".exp_avg"]
		v, okV := s.Tensors[p.Name+".exp_avg_sq"]
		if !ok && !okM && !okV {
			continue // never updated
		}
		if !ok || !okM || !okV {
			return fail(fmt.Errorf("optim: state of %q is incomplete", p.Name))
		}
		st := &adamState{step: step.ItemInt()}
		if st.expAvg, err = restore(p.Name+".exp_avg", m, p.Tensor); err != nil {
			return fail(err)
		}
		if st.expAvgSq, err = restore(p.Name+".exp_avg_sq", v, p.Tensor); err != nil {
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
	for _, p := range o.params {
		if t, ok := s.Tensors[p.Name+".step"]; ok {
			steps[p.Name] = t.ItemInt()
		}
		if t, ok := s.Tensors[p.Name+".momentum_buffer"]; ok {
			b, err := restore(p.Name+".momentum_buffer", t, p.Tensor)
			if err != nil {
				for _, b := range bufs {
					b.Close()
				}
				return err
			}
			bufs[p.Name] = b
		}
	}
	o.Close()
	o.bufs, o.steps, o.lr = bufs, steps, lr
	return nil
}
