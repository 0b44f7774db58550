package clipiqa

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/dp2osr/dp2o/reward"
	"github.com/dp2osr/dp2o/torch"
	"github.com/dp2osr/dp2o/torch/nn"
	"github.com/dp2osr/dp2o/torch/pickle"
	"github.com/dp2osr/dp2o/vision/clip"
)

// Published file names: the learned prompts of pyiqa's weights repository,
// and the CLIP RN50 weights.
const (
	PromptFile = "CLIP-IQA+_learned_prompts-603f3273.pth"
	// CLIPFile is OpenAI's RN50 release name: a TorchScript archive, whose
	// tensors are read without running its code (pickle.LoadTorchScript).
	// The same weights as a state dict may be given as RN50.pth or
	// RN50.safetensors instead.
	CLIPFile = "RN50.pt"
)

// CtxKey is the state-dict key of the learned context.
const CtxKey = "prompt_learner.ctx"

// ignoredKeys are keys a CLIP or CLIP-IQA+ state dict may hold that the
// model does not load: pyiqa drops the first three from the CLIP state
// dict, and derives the prompt buffers from the token embedding.
var ignoredKeys = []string{
	"input_resolution", "context_length", "vocab_size",
	"prompt_learner.token_prefix", "prompt_learner.token_suffix", "prompt_learner.tokenized_prompts",
}

func init() {
	reward.Register("clipiqa+", func(o reward.OpenOptions) (reward.Scorer, error) { return Open(o) })
}

// Scorer is the clipiqa+ metric (reward.Scorer).
type Scorer struct {
	model  *Model
	params *nn.Params
	dev    torch.Device
}

var _ reward.Scorer = (*Scorer)(nil)

// Open opens clipiqa+. The weights come from o.Source (the CLIP state-dict
// keys plus CtxKey) or from o.Weights, a directory holding PromptFile (a
// bare tensor, torch.save'd) and the CLIP RN50 weights as a state dict:
// RN50.safetensors, RN50.pth, or OpenAI's RN50.pt (a TorchScript archive;
// a state-dict checkpoint under that name is read too).
func Open(o reward.OpenOptions) (*Scorer, error) {
	return OpenTap(o, nil)
}

// OpenTap is Open with a tap on the prompt-branch intermediates.
func OpenTap(o reward.OpenOptions, tap Tap) (*Scorer, error) {
	src := o.Source
	if src == nil {
		ms, err := loadDir(o.Weights)
		if err != nil {
			return nil, fmt.Errorf("clipiqa+: %w", err)
		}
		defer ms.Close()
		src = ms
	}
	shape, _, ok := src.Meta(CtxKey)
	if !ok {
		return nil, fmt.Errorf("clipiqa+: the weights have no learned prompt context %q", CtxKey)
	}
	shared, err := checkCtx(shape, clip.RN50Text.Width)
	if err != nil {
		return nil, fmt.Errorf("clipiqa+: %w", err)
	}
	b := nn.NewBuilder(hide(src, ignoredKeys), o.ComputeDType(), o.Device)
	m, err := New(b, shared, tap)
	if err != nil {
		b.Params().Close()
		return nil, fmt.Errorf("clipiqa+: %w", err)
	}
	p, err := b.Finish()
	if err != nil {
		m.Close() // the folded convolutions are the model's own
		return nil, fmt.Errorf("clipiqa+: %w", err)
	}
	return &Scorer{model: m, params: p, dev: o.Device}, nil
}

// loadDir reads the CLIP state dict and the learned context from dir.
func loadDir(dir string) (nn.MapSource, error) {
	if dir == "" {
		return nil, fmt.Errorf("no weights: set OpenOptions.Weights to a directory holding %s and the CLIP RN50 weights", PromptFile)
	}
	if st, err := os.Stat(dir); err != nil {
		return nil, err
	} else if !st.IsDir() {
		return nil, fmt.Errorf("%s is not a directory: clipiqa+ needs %s and the CLIP RN50 weights", dir, PromptFile)
	}
	ctx, err := pickle.LoadTensor(filepath.Join(dir, PromptFile))
	if err != nil {
		return nil, err
	}
	var ms nn.MapSource
	for _, name := range []string{"RN50.safetensors", "RN50.pth", CLIPFile} {
		path := filepath.Join(dir, name)
		if _, err := os.Stat(path); err != nil {
			continue
		}
		if strings.HasSuffix(name, ".safetensors") {
			st, err := nn.OpenSafetensors(path)
			if err != nil {
				return nil, err
			}
			ms, err = copySource(st)
			st.Close()
			if err != nil {
				return nil, fmt.Errorf("%s: %w", path, err)
			}
		} else {
			ms, err = nn.LoadPth(path, pickle.WithKey(""))
			var refused *pickle.RefusedGlobalError
			if errors.As(err, &refused) && strings.HasPrefix(refused.Module, "__torch__") {
				// OpenAI's release is a TorchScript archive: read its tensors.
				ms, err = loadScript(path)
			}
			if err != nil {
				return nil, err
			}
		}
		break
	}
	if ms == nil {
		return nil, fmt.Errorf("%s holds none of RN50.safetensors, RN50.pth, %s", dir, CLIPFile)
	}
	dt, err := torch.DTypeFromSafetensors(ctx.DType)
	if err != nil {
		ms.Close()
		return nil, fmt.Errorf("%s: %w", PromptFile, err)
	}
	t, err := torch.FromBytes(ctx.Data, dt, ctx.Shape)
	if err != nil {
		ms.Close()
		return nil, fmt.Errorf("%s: %w", PromptFile, err)
	}
	if old, ok := ms[CtxKey]; ok {
		old.Close()
	}
	ms[CtxKey] = torch.Unscope(t)
	return ms, nil
}

// loadScript reads the CLIP state dict from a TorchScript archive (what
// pyiqa's clip.load gets from torch.jit.load(...).state_dict()): every
// tensor attribute except the text blocks' causal masks, which CLIP keeps
// as plain attributes, not state.
func loadScript(path string) (nn.MapSource, error) {
	sd, err := pickle.LoadTorchScript(path)
	if err != nil {
		return nil, err
	}
	ms := nn.MapSource{}
	for _, t := range sd.Tensors {
		if strings.HasSuffix(t.Name, ".attn_mask") || t.Name == "attn_mask" {
			continue
		}
		dt, err := torch.DTypeFromSafetensors(t.DType)
		if err == nil {
			var tt *torch.Tensor
			if tt, err = torch.FromBytes(t.Data, dt, t.Shape); err == nil {
				ms[t.Name] = torch.Unscope(tt)
				continue
			}
		}
		ms.Close()
		return nil, fmt.Errorf("%s: tensor %q: %w", path, t.Name, err)
	}
	return ms, nil
}

// copySource reads every tensor of src into memory.
func copySource(src nn.Source) (nn.MapSource, error) {
	ms := nn.MapSource{}
	for _, k := range src.Names() {
		t, err := src.Load(k)
		if err != nil {
			ms.Close()
			return nil, err
		}
		ms[k] = torch.Unscope(t)
	}
	return ms, nil
}

// hidden is a Source without some keys.
type hidden struct {
	nn.Source
	drop []string
}

func hide(src nn.Source, drop []string) nn.Source { return hidden{src, drop} }

func (h hidden) Names() []string {
	var out []string
	for _, k := range h.Source.Names() {
		if !slices.Contains(h.drop, k) {
			out = append(out, k)
		}
	}
	return out
}

func (h hidden) Meta(key string) ([]int64, torch.DType, bool) {
	if slices.Contains(h.drop, key) {
		return nil, 0, false
	}
	return h.Source.Meta(key)
}

// Close does not close the wrapped source (its owner does).
func (h hidden) Close() error { return nil }

// Name is pyiqa's metric name.
func (s *Scorer) Name() string { return "clipiqa+" }

// FullReference is false: clipiqa+ is a no-reference metric.
func (s *Scorer) FullReference() bool { return false }

// HigherIsBetter is true.
func (s *Scorer) HigherIsBetter() bool { return true }

// Model is the network.
func (s *Scorer) Model() *Model { return s.model }

// Score scores img (N,3,H,W) RGB in [0,1]; ref is ignored.
func (s *Scorer) Score(ctx context.Context, img, ref *torch.Tensor) ([]float64, error) {
	return s.ScoreTap(ctx, img, nil)
}

// ScoreTap is Score with a tap on the image-branch intermediates.
func (s *Scorer) ScoreTap(ctx context.Context, img *torch.Tensor, tap Tap) (out []float64, err error) {
	if s.model == nil {
		return nil, fmt.Errorf("clipiqa+: scorer is closed")
	}
	if err := reward.CheckInputs(ctx, s, img, nil); err != nil {
		return nil, err
	}
	return reward.RunScores("clipiqa+", func() *torch.Tensor { return s.model.Forward(img.ToDevice(s.dev), tap) })
}

// Close frees the weights.
func (s *Scorer) Close() error {
	if s.model != nil {
		s.model.Close()
		s.params.Close()
		s.model, s.params = nil, nil
	}
	return nil
}
