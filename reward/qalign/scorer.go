package qalign

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/dp2osr/dp2o/hub"
	"github.com/dp2osr/dp2o/reward"
	"github.com/dp2osr/dp2o/torch"
	"github.com/dp2osr/dp2o/torch/nn"
)

// ModelID is the published checkpoint pyiqa loads.
const ModelID = "q-future/one-align"

// Patterns are the files of ModelID the scorer needs.
var Patterns = []string{"config.json", "preprocessor_config.json", "tokenizer.model", "*.safetensors",
	"*.safetensors.index.json", "*.bin", "*.bin.index.json"}

// ignoredKeys are checkpoint keys the model does not use (older LLaMA
// checkpoints store the rotary inverse frequencies).
func ignoredKey(k string) bool { return strings.HasSuffix(k, ".rotary_emb.inv_freq") }

func init() {
	reward.Register("qalign", func(o reward.OpenOptions) (reward.Scorer, error) { return Open(o) })
}

// Options open a scorer with explicit parts; zero fields come from the
// checkpoint folder (OpenOptions.Weights) or the defaults.
type Options struct {
	reward.OpenOptions
	// Config replaces the folder's config.json.
	Config *Config
	// Prompt replaces the prompt tokenised with the folder's tokenizer.model.
	Prompt *Prompt
	// Processor replaces the folder's preprocessor_config.json (default:
	// DefaultProcessor when the folder has none).
	Processor *Processor
}

// Scorer is the qalign metric (reward.Scorer): no-reference, higher is
// better, scores in [1, 5].
type Scorer struct {
	model  *Model
	params *nn.Params
	prompt Prompt
	proc   Processor
	dev    torch.Device
	dtype  torch.DType
}

var _ reward.Scorer = (*Scorer)(nil)

// Open opens qalign. o.Weights is a folder holding the published
// q-future/one-align files (itself, or as its subfolder "one-align"; the
// files: config.json, tokenizer.model,
// preprocessor_config.json and the weights: model.safetensors, a sharded
// model.safetensors.index.json, pytorch_model.bin or a sharded
// pytorch_model.bin.index.json, float16, bfloat16 or float32), or a model
// id ("q-future/one-align") resolved through the Hugging Face cache
// (HF_HUB_OFFLINE=1 to stay offline). o.Source, when set, replaces the
// folder's weights. The compute dtype defaults to float16 on CUDA (as
// pyiqa) and float32 on the CPU (where bfloat16 may be asked for, to halve
// the memory; float16 is refused there).
func Open(o reward.OpenOptions) (*Scorer, error) { return OpenWith(Options{OpenOptions: o}) }

// OpenWith is Open with explicit configuration, prompt and processor.
func OpenWith(o Options) (s *Scorer, err error) {
	defer func() {
		if err != nil {
			err = fmt.Errorf("qalign: %w", err)
		}
	}()
	dir := o.Weights
	if dir != "" && !hub.IsLocal(dir) {
		if filepath.IsAbs(dir) || strings.HasPrefix(dir, ".") {
			return nil, fmt.Errorf("%s: no such folder", dir)
		}
		c := hub.FromEnv()
		c.Progress = nil
		if dir, err = c.Resolve(context.Background(), dir, "", Patterns...); err != nil {
			return nil, fmt.Errorf("no local folder %s; as a model id: %w", o.Weights, err)
		}
	}
	if dir != "" {
		if st, err := os.Stat(dir); err != nil {
			return nil, err
		} else if !st.IsDir() {
			return nil, fmt.Errorf("%s is not a folder (want the one-align checkpoint folder)", dir)
		}
		// A folder of several metrics' checkpoints holds this one as a
		// subfolder under the repository's name.
		sub := filepath.Join(dir, filepath.Base(ModelID))
		if !fileExists(filepath.Join(dir, ConfigFile)) && fileExists(filepath.Join(sub, ConfigFile)) {
			dir = sub
		}
	}
	need := func(what string) error {
		if dir == "" {
			return fmt.Errorf("no %s: set OpenOptions.Weights to the %s folder (or a model id)", what, ModelID)
		}
		return nil
	}
	cfg := o.Config
	if cfg == nil {
		if err := need(ConfigFile); err != nil {
			return nil, err
		}
		c, err := LoadConfig(filepath.Join(dir, ConfigFile))
		if err != nil {
			return nil, err
		}
		cfg = &c
	}
	prompt := o.Prompt
	if prompt == nil {
		if err := need(TokenizerFile); err != nil {
			return nil, err
		}
		tok, err := LoadTokenizer(filepath.Join(dir, TokenizerFile))
		if err != nil {
			return nil, err
		}
		if int64(tok.VocabSize()) != cfg.VocabSize {
			return nil, fmt.Errorf("%s has %d pieces, the model's vocabulary is %d", TokenizerFile, tok.VocabSize(), cfg.VocabSize)
		}
		p, err := QualityPromptOf(tok)
		if err != nil {
			return nil, err
		}
		prompt = &p
	}
	if err := prompt.Check(cfg.VocabSize); err != nil {
		return nil, fmt.Errorf("prompt: %w", err)
	}
	proc := DefaultProcessor
	if o.Processor != nil {
		proc = *o.Processor
	} else if dir != "" {
		path := filepath.Join(dir, ProcessorFile)
		if _, err := os.Stat(path); err == nil {
			if proc, err = LoadProcessor(path); err != nil {
				return nil, err
			}
		}
	}
	if err := proc.check(); err != nil {
		return nil, err
	}
	if int64(proc.CropSize) != cfg.Vision.ImageSize {
		return nil, fmt.Errorf("processor crop %d, the vision tower takes %d", proc.CropSize, cfg.Vision.ImageSize)
	}
	dev := o.Device
	dtype := o.DType
	if !dtype.IsFloat() {
		dtype = torch.Float32
		if dev.Type == torch.DeviceCUDA {
			dtype = torch.Float16
		}
	}
	if dev.Type == torch.DeviceCPU && dtype != torch.Float32 && dtype != torch.BFloat16 {
		return nil, fmt.Errorf("dtype %v on the CPU is not supported (libtorch has no CPU float16 matmul): use float32 or bfloat16 there, float16 on CUDA", dtype)
	}
	src := o.Source
	var pickled *pickleSource
	if src == nil {
		if err := need("weights"); err != nil {
			return nil, err
		}
		path, err := nn.FindWeights(dir, nn.TransformersWeights, "")
		if err != nil {
			return nil, err
		}
		var ws nn.Source
		if strings.HasSuffix(path, ".bin") || strings.HasSuffix(path, ".bin.index.json") {
			ps, err := openPickle(path)
			if err != nil {
				return nil, err
			}
			pickled, ws = ps, ps
		} else if ws, err = nn.OpenWeights(path); err != nil {
			return nil, err
		}
		defer ws.Close()
		src = ws
	}
	m, p, err := build(filtered{src}, *cfg, dtype, dev)
	if err != nil {
		if pickled != nil && pickled.err != nil {
			return nil, fmt.Errorf("%s: %w", o.Weights, pickled.err)
		}
		return nil, err
	}
	return &Scorer{model: m, params: p, prompt: *prompt, proc: proc, dev: dev, dtype: dtype}, nil
}

// build constructs the model from src and checks the keys.
func build(src nn.Source, cfg Config, dtype torch.DType, dev torch.Device) (*Model, *nn.Params, error) {
	b := nn.NewBuilder(src, dtype, dev)
	m, err := New(b, cfg)
	if err != nil {
		m.Close()
		b.Params().Close()
		return nil, nil, err
	}
	p, err := b.Finish()
	if err != nil {
		m.Close()
		return nil, nil, err
	}
	return m, p, nil
}

// filtered hides the keys the model ignores.
type filtered struct{ nn.Source }

func (f filtered) Names() []string {
	var out []string
	for _, k := range f.Source.Names() {
		if !ignoredKey(k) {
			out = append(out, k)
		}
	}
	return out
}

func (f filtered) Meta(key string) ([]int64, torch.DType, bool) {
	if ignoredKey(key) {
		return nil, 0, false
	}
	return f.Source.Meta(key)
}

// Close does not close the wrapped source.
func (f filtered) Close() error { return nil }

// Name is pyiqa's metric name.
func (s *Scorer) Name() string { return "qalign" }

// FullReference is false: qalign is a no-reference metric.
func (s *Scorer) FullReference() bool { return false }

// HigherIsBetter is true.
func (s *Scorer) HigherIsBetter() bool { return true }

// Model is the network.
func (s *Scorer) Model() *Model { return s.model }

// Prompt is the tokenised prompt the scorer uses.
func (s *Scorer) Prompt() Prompt { return s.prompt }

// Processor is the image preprocessing.
func (s *Scorer) Processor() Processor { return s.proc }

// Score scores img (N,3,H,W) RGB in [0,1]; ref is ignored. The N images
// run as one batch (pyiqa runs one at a time; the prompt has a fixed
// length, so the results agree at float tolerance).
func (s *Scorer) Score(ctx context.Context, img, ref *torch.Tensor) ([]float64, error) {
	return s.ScoreTap(ctx, img, nil)
}

// ScoreTap is Score with a tap on the intermediates.
func (s *Scorer) ScoreTap(ctx context.Context, img *torch.Tensor, tap Tap) (out []float64, err error) {
	if s.model == nil {
		return nil, errors.New("qalign: scorer is closed")
	}
	if err := reward.CheckInputs(ctx, s, img, nil); err != nil {
		return nil, err
	}
	pix, err := s.proc.Preprocess(img)
	if err != nil {
		return nil, fmt.Errorf("qalign: preprocess: %w", err)
	}
	defer pix.Close()
	if err := ctxErr(ctx); err != nil {
		return nil, err
	}
	return reward.RunScores("qalign", func() *torch.Tensor {
		x := pix.To(s.dtype).ToDevice(s.dev)
		return s.model.Score(x, s.prompt, tap)
	})
}

func ctxErr(ctx context.Context) error {
	if ctx != nil && ctx.Err() != nil {
		return fmt.Errorf("qalign: %w", ctx.Err())
	}
	return nil
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

func fileExists(p string) bool {
	st, err := os.Stat(p)
	return err == nil && st.Mode().IsRegular()
}
