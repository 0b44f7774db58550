package preference

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

	"github.com/dp2osr/dp2o/torch"
	"github.com/dp2osr/dp2o/torch/nn"
	"github.com/dp2osr/dp2o/torch/optim"
	"github.com/dp2osr/dp2o/torch/safetensors"
)

// CheckpointFormat names the checkpoint layout SaveCheckpoint writes.
const CheckpointFormat = "dp2o-dpo-checkpoint/1"

// Files of a checkpoint folder.
const (
	// CheckpointModel is the trained ControlNet as a flat state dict, in
	// the layout of DP²O-SR's released model.safetensors (float32).
	CheckpointModel     = "model.safetensors"
	CheckpointOptimizer = "optimizer.safetensors"
	CheckpointRNG       = "random_states.safetensors"
	CheckpointState     = "trainer_state.json"
)

// TrainState is a checkpoint's trainer_state.json: where training stands
// and what it was started from.
type TrainState struct {
	Format   string `json:"format"`
	Backbone string `json:"backbone"`
	// Step is the number of optimizer steps taken.
	Step int `json:"step"`
	// Epoch and Pos are the loader's position; Seed its shuffling seed.
	Epoch         int    `json:"epoch"`
	Pos           int    `json:"pos"`
	Seed          uint64 `json:"seed"`
	PairsPerBatch int    `json:"pairs_per_batch"`
	// Reference fingerprints the initial ControlNet (π_ref): a resumed run
	// must start from the same one.
	Reference Fingerprint `json:"reference"`
	LR        float64     `json:"lr"`
	Config    TrainConfig `json:"config"`
}

// referenceFingerprint is computed once per trainer.
func (t *Trainer) referenceFingerprint() (Fingerprint, error) {
	if t.refFP == nil {
		fp, err := FingerprintOf(t.Backbone.ReferenceParams())
		if err != nil {
			return Fingerprint{}, err
		}
		t.refFP = &fp
	}
	return *t.refFP, nil
}

// SavePolicy writes the policy ControlNet's weights to path as a flat
// float32 state dict (atomically), the layout the inference pipelines and
// DP²O-SR's scripts load. The weights are copied to the host one at a
// time, as the file is written.
func SavePolicy(path string, params []optim.Param) (err error) {
	defer torch.Recover(&err)
	ts := make([]safetensors.Tensor, 0, len(params))
	for _, p := range params {
		ts = append(ts, safetensors.Tensor{Name: p.Name, DType: safetensors.DType(torch.Float32.SafetensorsCode()), Shape: p.Tensor.Shape(),
			Source: func() (b []byte, err error) {
				err = torch.Try(func() {
					c := torch.Scoped(func() *torch.Tensor {
						return p.Tensor.Detach().ToDevice(torch.CPU).To(torch.Float32).Contiguous()
					})
					defer c.Close()
					b = c.Bytes()
				})
				return b, err
			}})
	}
	return safetensors.Save(path, ts, map[string]string{"format": "pt"})
}

// SaveCheckpoint writes the training state to dir atomically (a sibling
// temporary folder renamed into place): the ControlNet (CheckpointModel),
// the optimizer state, the loader's generator state and trainer_state.json
// with the data position. l may be nil (no data state).
func (t *Trainer) SaveCheckpoint(dir string, l *Loader) (err error) {
	ref, err := t.referenceFingerprint()
	if err != nil {
		return fmt.Errorf("preference: checkpoint: %w", err)
	}
	parent := filepath.Dir(dir)
	if err := os.MkdirAll(parent, 0o755); err != nil {
		return fmt.Errorf("preference: checkpoint: %w", err)
	}
	tmp, err := os.MkdirTemp(parent, "."+filepath.Base(dir)+".tmp")
	if err != nil {
		return fmt.Errorf("preference: checkpoint: %w", err)
	}
	defer func() {
		if err != nil {
			os.RemoveAll(tmp)
		}
	}()
	if err = SavePolicy(filepath.Join(tmp, CheckpointModel), t.Backbone.PolicyParams()); err != nil {
		return fmt.Errorf("preference: checkpoint: model: %w", err)
	}
	st, err := t.Opt.StateDict()
	if err != nil {
		return fmt.Errorf("preference: checkpoint: optimizer: %w", err)
	}
	err = st.Save(filepath.Join(tmp, CheckpointOptimizer))
	st.Close()
	if err != nil {
		return fmt.Errorf("preference: checkpoint: optimizer: %w", err)
	}
	state := TrainState{Format: CheckpointFormat, Backbone: t.Backbone.Kind(), Step: t.StepsDone,
		Reference: ref, LR: t.Opt.LR(), Config: t.Config}
	if l != nil {
		state.Epoch, state.Pos, state.Seed, state.PairsPerBatch = l.Epoch, l.Pos, l.Seed, l.PairsPerBatch
		if err = saveRNG(filepath.Join(tmp, CheckpointRNG), l.Gen); err != nil {
			return fmt.Errorf("preference: checkpoint: %w", err)
		}
	}
	b, err := json.MarshalIndent(state, "", " ")
	if err != nil {
		return fmt.Errorf("preference: checkpoint: %w", err)
	}
	if err = WriteFileAtomic(filepath.Join(tmp, CheckpointState), append(b, '\n')); err != nil {
		return err
	}
	for name, data := range t.CheckpointFiles {
		if name != filepath.Base(name) || name == CheckpointModel || name == CheckpointOptimizer || name == CheckpointRNG || name == CheckpointState {
			return fmt.Errorf("preference: checkpoint: extra file name %q", name)
		}
		if err = WriteFileAtomic(filepath.Join(tmp, name), data); err != nil {
			return err
		}
	}
	// Replace an older folder of the same name only once the new one is complete.
	old := ""
	if _, e := os.Stat(dir); e == nil {
		old = tmp + ".old"
		if err = os.Rename(dir, old); err != nil {
			return fmt.Errorf("preference: checkpoint: %w", err)
		}
	}
	if err = os.Rename(tmp, dir); err != nil {
		if old != "" {
			os.Rename(old, dir)
		}
		return fmt.Errorf("preference: checkpoint: %w", err)
	}
	if old != "" {
		os.RemoveAll(old)
	}
	return nil
}

func saveRNG(path string, gen *torch.Generator) (err error) {
	defer torch.Recover(&err)
	s := gen.State()
	defer s.Close()
	return safetensors.Save(path, []safetensors.Tensor{{Name: "cpu", DType: safetensors.DType(s.DType().SafetensorsCode()),
		Shape: s.Shape(), Data: s.Bytes()}}, nil)
}

func loadRNG(path string, gen *torch.Generator) (err error) {
	f, err := safetensors.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	info, ok := f.Info("cpu")
	if !ok {
		return fmt.Errorf("%s has no generator state \"cpu\"", path)
	}
	data, err := f.Data("cpu")
	if err != nil {
		return err
	}
	dt, err := torch.DTypeFromSafetensors(string(info.DType))
	if err != nil {
		return err
	}
	s, err := torch.FromBytes(data, dt, info.Shape)
	if err != nil {
		return err
	}
	defer s.Close()
	return gen.SetState(s)
}

// ReadTrainState reads a checkpoint's trainer_state.json.
func ReadTrainState(dir string) (*TrainState, error) {
	b, err := os.ReadFile(filepath.Join(dir, CheckpointState))
	if err != nil {
		return nil, fmt.Errorf("preference: checkpoint: %w", err)
	}
	var st TrainState
	if err := json.Unmarshal(b, &st); err != nil {
		return nil, fmt.Errorf("preference: checkpoint %s: %s: %w", dir, CheckpointState, err)
	}
	if st.Format != CheckpointFormat {
		return nil, fmt.Errorf("preference: checkpoint %s: format %q, want %q", dir, st.Format, CheckpointFormat)
	}
	return &st, nil
}

// LoadCheckpoint restores a checkpoint written by SaveCheckpoint: the
// policy's weights, the optimizer state, the schedule's position, the step
// count and (with l) the data position and the generator state. The
// trainer must have been built from the same initial ControlNet (its
// reference is compared with the checkpoint's) and the same backbone.
func (t *Trainer) LoadCheckpoint(dir string, l *Loader) (err error) {
	st, err := ReadTrainState(dir)
	if err != nil {
		return err
	}
	if st.Backbone != t.Backbone.Kind() {
		return fmt.Errorf("preference: checkpoint %s is a %s checkpoint, training %s", dir, st.Backbone, t.Backbone.Kind())
	}
	ref, err := t.referenceFingerprint()
	if err != nil {
		return fmt.Errorf("preference: checkpoint: %w", err)
	}
	if ref != st.Reference {
		return fmt.Errorf("preference: checkpoint %s was trained from another initial ControlNet (reference sha256 %.12s…, this run's %.12s…)",
			dir, st.Reference.SHA256, ref.SHA256)
	}
	if l != nil && (st.Seed != l.Seed || st.PairsPerBatch != l.PairsPerBatch) {
		return fmt.Errorf("preference: checkpoint %s: seed %d and %d pairs per batch, this run has %d and %d",
			dir, st.Seed, st.PairsPerBatch, l.Seed, l.PairsPerBatch)
	}
	if err := loadPolicy(filepath.Join(dir, CheckpointModel), t.Backbone.PolicyParams()); err != nil {
		return fmt.Errorf("preference: checkpoint %s: %w", dir, err)
	}
	// Read tensor by tensor as the optimizer restores it; a sharded
	// optimizer's rank reads its part only.
	if err := optim.LoadStateFile(t.Opt, filepath.Join(dir, CheckpointOptimizer)); err != nil {
		return fmt.Errorf("preference: checkpoint %s: optimizer: %w", dir, err)
	}
	if l != nil {
		if err := loadRNG(filepath.Join(dir, CheckpointRNG), l.Gen); err != nil {
			return fmt.Errorf("preference: checkpoint %s: random states: %w", dir, err)
		}
		if err := l.SetPosition(st.Epoch, st.Pos); err != nil {
			return fmt.Errorf("preference: checkpoint %s: %w", dir, err)
		}
	}
	t.Sched.SetLastStep(st.Step)
	t.StepsDone = st.Step
	return nil
}

// loadPolicy copies a flat state dict into params: every parameter's key
// with its shape, no other key (strict, as load_state_dict).
func loadPolicy(path string, params []optim.Param) error {
	src, err := nn.OpenSafetensors(path)
	if err != nil {
		return fmt.Errorf("model: %w", err)
	}
	defer src.Close()
	want := map[string]bool{}
	for _, p := range params {
		want[p.Name] = true
	}
	var extra []string
	for _, n := range src.Names() {
		if !want[n] {
			extra = append(extra, n)
		}
	}
	if len(extra) > 0 {
		sort.Strings(extra)
		return fmt.Errorf("model: unexpected keys %s", strings.Join(extra, ", "))
	}
	return torch.Try(func() {
		torch.NoGrad(func() {
			for _, p := range params {
				shape, _, ok := src.Meta(p.Name)
				if !ok {
					torch.Errorf("checkpoint", "model: missing key %s", p.Name)
				}
				if fmt.Sprint(shape) != fmt.Sprint(p.Tensor.Shape()) {
					torch.Errorf("checkpoint", "model: %s has shape %v, the ControlNet's is %v", p.Name, shape, p.Tensor.Shape())
				}
				v, err := src.Load(p.Name)
				if err != nil {
					torch.Errorf("checkpoint", "model: %s: %v", p.Name, err)
				}
				p.Tensor.Copy_(v)
				v.Close()
			}
		})
	})
}

// LatestCheckpoint returns the checkpoint-<step> folder of dir with the
// highest step, or "" when there is none.
func LatestCheckpoint(dir string) (string, error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return "", nil
		}
		return "", err
	}
	best, bestStep := "", -1
	for _, e := range ents {
		n, ok := strings.CutPrefix(e.Name(), "checkpoint-")
		if !ok || !e.IsDir() {
			continue
		}
		if s, err := strconv.Atoi(n); err == nil && s > bestStep {
			best, bestStep = filepath.Join(dir, e.Name()), s
		}
	}
	return best, nil
}
