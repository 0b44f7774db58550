package t5

import (
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"sort"

	"github.com/dp2osr/dp2o/torch"
	"github.com/dp2osr/dp2o/torch/nn"
)

// Published weight files of a T5EncoderModel folder, looked up in this
// order: one file, or a sharded checkpoint's index.
const (
	WeightsFile = "model.safetensors"
	IndexFile   = "model.safetensors.index.json"
)

// Keys of the token embedding: T5EncoderModel's state dict has both, tied;
// published checkpoints store only SharedKey.
const (
	SharedKey      = "shared.weight"
	EmbedTokensKey = "encoder.embed_tokens.weight"
)

// Encoder is transformers' T5EncoderModel (eval mode): the shared token
// embedding, the encoder blocks and the final RMS norm. Weights use the
// Hugging Face names (shared.weight, encoder.block.i.…).
type Encoder struct {
	Config    Config
	Shared    *nn.Embedding
	Blocks    []*Block
	FinalNorm *nn.RMSNorm
	// Params holds the weights when the encoder owns them (LoadEncoder,
	// EncoderFromSource); nil when it was built on a caller's Builder.
	Params *nn.Params
}

// Output is the result of ForwardHidden. The caller owns the tensors
// (Close frees them all).
type Output struct {
	// LastHidden is last_hidden_state: the final norm of the last block's
	// output, (B, L, d_model). FLUX's prompt_embeds.
	LastHidden *torch.Tensor
	// Hidden holds the token embeddings, then the output of every block
	// (num_layers + 1 tensors, (B, L, d_model)); the last entry is the raw
	// last block output, which transformers' hidden_states replaces with
	// LastHidden.
	Hidden []*torch.Tensor
	// PositionBias is the relative position bias the first block computes
	// and every block adds, (1, heads, L, L); with ForwardMasked, plus the
	// extended mask, (B, heads, L, L).
	PositionBias *torch.Tensor
}

// Close frees every tensor of the output. It is idempotent.
func (o *Output) Close() {
	if o == nil {
		return
	}
	o.LastHidden.Close()
	o.PositionBias.Close()
	for _, h := range o.Hidden {
		h.Close()
	}
}

// NewEncoder builds the encoder from b, positioned at the root of a
// T5EncoderModel state dict. The weights belong to the builder.
func NewEncoder(b *nn.Builder, cfg Config) (*Encoder, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	e := &Encoder{
		Config: cfg,
		Shared: nn.NewEmbedding(b.Sub("shared"), int64(cfg.VocabSize), int64(cfg.DModel)),
	}
	blocks := b.Sub("encoder").Sub("block")
	for i := 0; i < cfg.NumLayers; i++ {
		e.Blocks = append(e.Blocks, newBlock(blocks.SubI(i), cfg, i == 0))
	}
	e.FinalNorm = nn.NewRMSNorm(b.Sub("encoder").Sub("final_layer_norm"), int64(cfg.DModel), cfg.LayerNormEps, true)
	return e, nil
}

// LoadEncoder loads a T5EncoderModel folder (FLUX's text_encoder_2/):
// config.json and model.safetensors, or a sharded
// model.safetensors.index.json. The files are memory-mapped; each weight is
// converted to dtype (floating-point ones) and placed on dev in turn, so the
// checkpoint is never copied whole into host memory.
func LoadEncoder(dir string, dtype torch.DType, dev torch.Device) (*Encoder, error) {
	cfg, err := LoadConfig(filepath.Join(dir, "config.json"))
	if err != nil {
		return nil, fmt.Errorf("t5 encoder: %w", err)
	}
	path, err := weightsPath(dir)
	if err != nil {
		return nil, fmt.Errorf("t5 encoder: %w", err)
	}
	src, err := nn.OpenSafetensors(path)
	if err != nil {
		return nil, fmt.Errorf("t5 encoder: %w", err)
	}
	defer src.Close()
	e, err := EncoderFromSource(src, cfg, dtype, dev)
	if err != nil {
		return nil, fmt.Errorf("t5 encoder: %s: %w", path, err)
	}
	return e, nil
}

// weightsPath finds the checkpoint of a folder.
func weightsPath(dir string) (string, error) {
	for _, name := range []string{WeightsFile, IndexFile} {
		p := filepath.Join(dir, name)
		if _, err := os.Stat(p); err == nil {
			return p, nil
		} else if !errors.Is(err, os.ErrNotExist) {
			return "", err
		}
	}
	for _, name := range []string{"pytorch_model.bin", "pytorch_model.bin.index.json"} {
		if _, err := os.Stat(filepath.Join(dir, name)); err == nil {
			return "", fmt.Errorf("%s has %s but no %s: only safetensors checkpoints are supported (convert it first)", dir, name, WeightsFile)
		}
	}
	return "", fmt.Errorf("%s: no %s or %s", dir, WeightsFile, IndexFile)
}

// EncoderFromSource builds the encoder from the weights of src (a
// T5EncoderModel state dict; EmbedTokensKey, tied to SharedKey, may be
// present or not). Every other key of src must be used. The returned
// encoder owns its weights (Close).
func EncoderFromSource(src nn.Source, cfg Config, dtype torch.DType, dev torch.Device) (*Encoder, error) {
	e, p, err := nn.Build(TiedEmbeddings(src), dtype, dev, func(b *nn.Builder) (*Encoder, error) { return NewEncoder(b, cfg) })
	if err != nil {
		return nil, err
	}
	e.Params = p
	return e, nil
}

// Close frees the weights the encoder owns. It is idempotent.
func (e *Encoder) Close() {
	if e == nil || e.Params == nil {
		return
	}
	e.Params.Close()
	e.Params = nil
}

// Device is where the encoder's weights live.
func (e *Encoder) Device() torch.Device { return e.Shared.Weight.Device() }

// DType is the dtype of the encoder's weights.
func (e *Encoder) DType() torch.DType { return e.Shared.Weight.DType() }

// CheckIDs reports whether ids can be fed to the encoder: an integer
// tensor (B, L) with B, L ≥ 1 and every id in [0, vocab_size).
func (e *Encoder) CheckIDs(ids *torch.Tensor) (err error) {
	defer torch.Recover(&err)
	if ids == nil || ids.Closed() {
		return errors.New("t5 encoder: input ids: nil or closed tensor")
	}
	if dt := ids.DType(); dt.IsFloat() || dt == torch.Bool {
		return fmt.Errorf("t5 encoder: input ids must be an integer tensor, got %v", dt)
	}
	sh := ids.Shape()
	if len(sh) != 2 {
		return fmt.Errorf("t5 encoder: input ids must be (batch, length), got shape %v", sh)
	}
	if sh[0] < 1 || sh[1] < 1 {
		return fmt.Errorf("t5 encoder: input ids shape %v is empty", sh)
	}
	s := torch.NewScope()
	defer s.Close()
	lo, hi := ids.Min().ItemInt(), ids.Max().ItemInt()
	if lo < 0 || hi >= int64(e.Config.VocabSize) {
		return fmt.Errorf("t5 encoder: token ids must be in [0, %d), got values in [%d, %d]", e.Config.VocabSize, lo, hi)
	}
	return nil
}

// Forward validates ids (B, L) (see CheckIDs) and returns last_hidden_state
// (B, L, d_model) in the weights' dtype on the encoder's device, computed
// without an attention mask as FLUX does. The caller closes the result.
func (e *Encoder) Forward(ids *torch.Tensor) (*torch.Tensor, error) {
	out, err := e.run(ids, nil, false)
	if err != nil {
		return nil, err
	}
	return out.LastHidden, nil
}

// ForwardHidden is Forward that also returns the embeddings, every block's
// output and the position bias.
func (e *Encoder) ForwardHidden(ids *torch.Tensor) (*Output, error) {
	return e.run(ids, nil, true)
}

// ForwardMasked is ForwardHidden with an attention mask (B, L) of 1 for the
// positions to attend to and 0 for the others, as T5EncoderModel(input_ids,
// attention_mask) computes it: (1 − mask)·finfo(dtype).min is added to the
// position bias of every block. FLUX does not mask; other T5 users do.
func (e *Encoder) ForwardMasked(ids, mask *torch.Tensor) (*Output, error) {
	if mask == nil || mask.Closed() {
		return nil, errors.New("t5 encoder: attention mask: nil or closed tensor")
	}
	return e.run(ids, mask, true)
}

func (e *Encoder) run(ids, mask *torch.Tensor, hidden bool) (out *Output, err error) {
	if err := e.CheckIDs(ids); err != nil {
		return nil, err
	}
	if e.Shared == nil || e.Shared.Weight.Closed() {
		return nil, errors.New("t5 encoder: used after Close")
	}
	if mask != nil {
		if ms, is := mask.Shape(), ids.Shape(); len(ms) != 2 || ms[0] != is[0] || ms[1] != is[1] {
			return nil, fmt.Errorf("t5 encoder: attention mask of shape %v does not fit input ids %v", ms, is)
		}
	}
	defer func() {
		if err != nil {
			err = fmt.Errorf("t5 encoder: %w", err)
		}
	}()
	defer torch.Recover(&err)
	return e.forward(ids, mask, hidden), nil
}

// dtypeMin is torch.finfo(dt).min of the floating dtypes.
func dtypeMin(dt torch.DType) float64 {
	switch dt {
	case torch.Float16:
		return -65504
	case torch.BFloat16:
		return -3.3895313892515355e38
	case torch.Float64:
		return -math.MaxFloat64
	}
	return -math.MaxFloat32
}

// forward panics with a *torch.Error on failure.
func (e *Encoder) forward(ids, mask *torch.Tensor, keepHidden bool) *Output {
	s := torch.NewScope()
	defer s.Close()
	dev := e.Device()
	if ids.DType() != torch.Int64 {
		ids = ids.To(torch.Int64)
	}
	if ids.Device() != dev {
		ids = ids.ToDevice(dev)
	}
	out := &Output{}
	h := e.Shared.Forward(ids)
	if keepHidden {
		out.Hidden = append(out.Hidden, h)
	}
	var bias *torch.Tensor
	if len(e.Blocks) > 0 && e.Blocks[0].RelativeBias != nil {
		bias = e.Blocks[0].PositionBias(ids.Size(1), int64(e.Config.NumBuckets), int64(e.Config.MaxDistance))
	}
	if mask != nil {
		// The extended mask (B, 1, 1, L) in the embeddings' dtype.
		dt := h.DType()
		ext := mask.ToDevice(dev).To(dt).Unsqueeze(1).Unsqueeze(1).RSub(1).MulScalar(dtypeMin(dt))
		if bias == nil {
			bias = ext
		} else {
			bias = bias.Add(ext)
		}
	}
	for _, blk := range e.Blocks {
		if keepHidden {
			h = blk.Forward(h, bias)
			out.Hidden = append(out.Hidden, h)
		} else { // nothing returns the block's input: freed now, not with s
			h = torch.Then(h, func(h *torch.Tensor) *torch.Tensor { return blk.Forward(h, bias) })
		}
	}
	out.LastHidden = e.FinalNorm.Forward(h)
	s.Keep(out.LastHidden)
	if keepHidden {
		out.PositionBias = bias
		s.Keep(out.PositionBias)
		s.Keep(out.Hidden...)
	}
	return out
}

// TiedEmbeddings presents a T5 checkpoint with one token embedding: when
// src holds both SharedKey and EmbedTokensKey (tied in transformers) the
// latter is hidden, and when it holds only EmbedTokensKey that is served
// as SharedKey. Closing the result closes src.
func TiedEmbeddings(src nn.Source) nn.Source {
	if t, ok := src.(tiedSource); ok {
		return t
	}
	_, _, hasShared := src.Meta(SharedKey)
	_, _, hasEmbed := src.Meta(EmbedTokensKey)
	if !hasEmbed {
		return src
	}
	return tiedSource{Source: src, rename: !hasShared}
}

type tiedSource struct {
	nn.Source
	rename bool // serve EmbedTokensKey as SharedKey
}

func (t tiedSource) Names() []string {
	var out []string
	for _, n := range t.Source.Names() {
		switch {
		case n != EmbedTokensKey:
			out = append(out, n)
		case t.rename:
			out = append(out, SharedKey)
		}
	}
	sort.Strings(out)
	return out
}

func (t tiedSource) key(k string) (string, bool) {
	switch {
	case k == EmbedTokensKey:
		return "", false
	case k == SharedKey && t.rename:
		return EmbedTokensKey, true
	}
	return k, true
}

func (t tiedSource) Meta(key string) ([]int64, torch.DType, bool) {
	k, ok := t.key(key)
	if !ok {
		return nil, 0, false
	}
	return t.Source.Meta(k)
}

func (t tiedSource) Load(key string) (*torch.Tensor, error) {
	k, ok := t.key(key)
	if !ok {
		return nil, fmt.Errorf("no tensor %q (tied to %s)", key, SharedKey)
	}
	return t.Source.Load(k)
}
