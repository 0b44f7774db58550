package clip

import (
	"errors"
	"fmt"
	"path/filepath"
	"strings"

	"github.com/dp2osr/dp2o/torch"
	"github.com/dp2osr/dp2o/torch/nn"
)

// TextWeightsFile is the weight file of a CLIPTextModel folder.
const TextWeightsFile = "model.safetensors"

// PositionIDsKey is the buffer that checkpoints written by older
// transformers versions carry (int64 arange, [1, max_position_embeddings]).
// transformers ignores it on load, and so does this package: the positions
// are always 0..L-1.
const PositionIDsKey = "text_model.embeddings.position_ids"

// TextModel is transformers' CLIPTextModel: token and position embeddings,
// a stack of pre-LayerNorm transformer layers with causal self-attention,
// and a final LayerNorm. Weights use the Hugging Face names
// (text_model.embeddings.token_embedding.weight, …).
//
// Forward and ForwardHidden panic with a *torch.Error on failure, like the
// tensor ops; Encode and EncodeHidden validate the ids and return errors.
type TextModel struct {
	Config            TextConfig
	TokenEmbedding    *nn.Embedding
	PositionEmbedding *nn.Embedding
	Layers            []*TextEncoderLayer
	FinalLayerNorm    *nn.LayerNorm
	// Params holds the weights when the model owns them (LoadTextModel,
	// TextModelFromSource); nil when it was built on a caller's Builder.
	Params *nn.Params
}

// TextEncoderLayer is one CLIPEncoderLayer: x + attn(ln1(x)), then
// x + mlp(ln2(x)).
type TextEncoderLayer struct {
	LayerNorm1, LayerNorm2 *nn.LayerNorm
	QProj, KProj, VProj    *nn.Linear
	OutProj                *nn.Linear
	FC1, FC2               *nn.Linear
	Heads                  int64
	act                    func(*torch.Tensor) *torch.Tensor
}

// TextOutput is the result of a forward pass. The caller owns the tensors
// (Close frees them all).
type TextOutput struct {
	// LastHidden is final_layer_norm of the last layer's output, (B, L, hidden):
	// last_hidden_state, SD2's encoder_hidden_states.
	LastHidden *torch.Tensor
	// Pooled is LastHidden at each row's eos position, (B, hidden): pooler_output.
	Pooled *torch.Tensor
	// Hidden is hidden_states of output_hidden_states=True: the embeddings,
	// then the output of every layer (without the final LayerNorm), so
	// NumHiddenLayers+1 tensors of (B, L, hidden). Hidden[len-1-k] is the
	// input of "clip skip" k; apply FinalLayerNorm to it as diffusers does.
	// Only ForwardHidden and EncodeHidden fill it.
	Hidden []*torch.Tensor
}

// Close frees every tensor of the output. It is idempotent.
func (o *TextOutput) Close() {
	if o == nil {
		return
	}
	o.LastHidden.Close()
	o.Pooled.Close()
	for _, h := range o.Hidden {
		h.Close()
	}
}

// textActivation maps config.hidden_act to the function transformers'
// ACT2FN gives it.
func textActivation(name string) (func(*torch.Tensor) *torch.Tensor, error) {
	switch name {
	case "gelu":
		return (*torch.Tensor).Gelu, nil
	case "quick_gelu":
		return quickGelu, nil
	case "gelu_pytorch_tanh", "gelu_new":
		// gelu_new is the same tanh approximation written out in Python;
		// the two differ only by rounding.
		return (*torch.Tensor).GeluTanh, nil
	}
	return nil, fmt.Errorf("clip text config: unsupported hidden_act %q (want gelu, quick_gelu or gelu_pytorch_tanh)", name)
}

// quickGelu is x·sigmoid(1.702·x), in transformers' order of operations.
func quickGelu(x *torch.Tensor) *torch.Tensor {
	s := x.MulScalar(1.702).Sigmoid()
	defer s.Close()
	return x.Mul(s)
}

// NewTextModel builds the model from b, which is positioned at the root of
// a CLIPTextModel state dict (the model adds the "text_model" prefix). A
// checkpoint holding PositionIDsKey should be wrapped with
// WithoutPositionIDs before it is given to the builder. The weights belong
// to the builder.
func NewTextModel(b *nn.Builder, cfg TextConfig) (*TextModel, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	act, _ := textActivation(cfg.HiddenAct)
	h := int64(cfg.HiddenSize)
	tm := b.Sub("text_model")
	emb := tm.Sub("embeddings")
	m := &TextModel{
		Config:            cfg,
		TokenEmbedding:    nn.NewEmbedding(emb.Sub("token_embedding"), int64(cfg.VocabSize), h),
		PositionEmbedding: nn.NewEmbedding(emb.Sub("position_embedding"), int64(cfg.MaxPositionEmbeddings), h),
	}
	layers := tm.Sub("encoder").Sub("layers")
	for i := 0; i < cfg.NumHiddenLayers; i++ {
		lb := layers.SubI(i)
		att := lb.Sub("self_attn")
		mlp := lb.Sub("mlp")
		inter := int64(cfg.IntermediateSize)
		m.Layers = append(m.Layers, &TextEncoderLayer{
			QProj:      nn.NewLinear(att.Sub("q_proj"), h, h, true),
			KProj:      nn.NewLinear(att.Sub("k_proj"), h, h, true),
			VProj:      nn.NewLinear(att.Sub("v_proj"), h, h, true),
			OutProj:    nn.NewLinear(att.Sub("out_proj"), h, h, true),
			LayerNorm1: nn.NewLayerNorm(lb.Sub("layer_norm1"), h, cfg.LayerNormEps, true),
			FC1:        nn.NewLinear(mlp.Sub("fc1"), h, inter, true),
			FC2:        nn.NewLinear(mlp.Sub("fc2"), inter, h, true),
			LayerNorm2: nn.NewLayerNorm(lb.Sub("layer_norm2"), h, cfg.LayerNormEps, true),
			Heads:      int64(cfg.NumAttentionHeads),
			act:        act,
		})
	}
	m.FinalLayerNorm = nn.NewLayerNorm(tm.Sub("final_layer_norm"), h, cfg.LayerNormEps, true)
	return m, nil
}

// LoadTextModel loads a CLIPTextModel folder: config.json and the weights
// transformers would load (model.safetensors, a sharded
// model.safetensors.index.json, pytorch_model.bin through the weights-only
// unpickler, or its sharded index: see nn.TransformersWeights). Weights
// are converted to dtype (floating-point ones) and placed on dev.
func LoadTextModel(dir string, dtype torch.DType, dev torch.Device) (*TextModel, error) {
	return LoadTextModelVariant(dir, "", dtype, dev)
}

// LoadTextModelVariant is LoadTextModel for a weights variant such as
// "fp16" (model.fp16.safetensors, ...); "" is LoadTextModel.
func LoadTextModelVariant(dir, variant string, dtype torch.DType, dev torch.Device) (*TextModel, error) {
	cfg, err := LoadTextConfig(filepath.Join(dir, "config.json"))
	if err != nil {
		return nil, fmt.Errorf("clip text model: %w", err)
	}
	path, err := nn.FindWeights(dir, nn.TransformersWeights, variant)
	if err != nil {
		return nil, fmt.Errorf("clip text model: %w", err)
	}
	st, err := nn.OpenWeights(path)
	if err != nil {
		return nil, fmt.Errorf("clip text model: %w", err)
	}
	src := WithoutPositionIDs(st)
	defer src.Close()
	m, err := TextModelFromSource(src, cfg, dtype, dev)
	if err != nil {
		return nil, fmt.Errorf("clip text model: %s: %w", path, err)
	}
	return m, nil
}

// TextModelFromSource builds the model from the weights of src (a
// CLIPTextModel state dict; PositionIDsKey is ignored). Every other key of
// src must be used. The returned model owns its weights (Close).
func TextModelFromSource(src nn.Source, cfg TextConfig, dtype torch.DType, dev torch.Device) (*TextModel, error) {
	m, p, err := nn.Build(WithoutPositionIDs(src), dtype, dev, func(b *nn.Builder) (*TextModel, error) { return NewTextModel(b, cfg) })
	if err != nil {
		return nil, err
	}
	m.Params = p
	return m, nil
}

// Close frees the weights the model owns. It is idempotent.
func (m *TextModel) Close() {
	if m == nil || m.Params == nil {
		return
	}
	m.Params.Close()
	m.Params = nil
}

// Device is where the model's weights live.
func (m *TextModel) Device() torch.Device { return m.TokenEmbedding.Weight.Device() }

// DType is the dtype of the model's weights.
func (m *TextModel) DType() torch.DType { return m.TokenEmbedding.Weight.DType() }

// CheckIDs reports whether ids can be fed to the model: an integer tensor
// of shape (B, L) with B ≥ 1, 1 ≤ L ≤ max_position_embeddings, and every
// id in [0, vocab_size).
func (m *TextModel) CheckIDs(ids *torch.Tensor) (err error) {
	defer torch.Recover(&err)
	if ids == nil || ids.Closed() {
		return errors.New("clip text model: input ids: nil or closed tensor")
	}
	if dt := ids.DType(); dt.IsFloat() || dt == torch.Bool {
		return fmt.Errorf("clip text model: input ids must be an integer tensor, got %v", dt)
	}
	sh := ids.Shape()
	if len(sh) != 2 {
		return fmt.Errorf("clip text model: input ids must be (batch, length), got shape %v", sh)
	}
	if sh[0] < 1 || sh[1] < 1 {
		return fmt.Errorf("clip text model: input ids shape %v is empty", sh)
	}
	if max := int64(m.Config.MaxPositionEmbeddings); sh[1] > max {
		return fmt.Errorf("clip text model: sequence length %d exceeds max_position_embeddings %d", sh[1], max)
	}
	s := torch.NewScope()
	defer s.Close()
	lo, hi := ids.Min().ItemInt(), ids.Max().ItemInt()
	if lo < 0 || hi >= int64(m.Config.VocabSize) {
		return fmt.Errorf("clip text model: token ids must be in [0, %d), got values in [%d, %d]", m.Config.VocabSize, lo, hi)
	}
	return nil
}

// Encode validates ids (see CheckIDs) and runs Forward; the output has no
// Hidden.
func (m *TextModel) Encode(ids *torch.Tensor) (out *TextOutput, err error) {
	return m.encode(ids, false)
}

// EncodeHidden validates ids (see CheckIDs) and runs ForwardHidden.
func (m *TextModel) EncodeHidden(ids *torch.Tensor) (out *TextOutput, err error) {
	return m.encode(ids, true)
}

func (m *TextModel) encode(ids *torch.Tensor, hidden bool) (out *TextOutput, err error) {
	if err := m.CheckIDs(ids); err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			err = fmt.Errorf("clip text model: %w", err)
		}
	}()
	defer torch.Recover(&err)
	return m.forward(ids, hidden), nil
}

// Forward runs the model on token ids (B, L) and returns last_hidden_state
// (B, L, hidden) and pooler_output (B, hidden). It panics with a
// *torch.Error on bad input; Encode checks first and returns an error.
func (m *TextModel) Forward(ids *torch.Tensor) (lastHidden, pooled *torch.Tensor) {
	o := m.forward(ids, false)
	return o.LastHidden, o.Pooled
}

// ForwardHidden is Forward that also returns every hidden state
// (output_hidden_states=True).
func (m *TextModel) ForwardHidden(ids *torch.Tensor) *TextOutput { return m.forward(ids, true) }

func (m *TextModel) forward(ids *torch.Tensor, keepHidden bool) *TextOutput {
	s := torch.NewScope()
	defer s.Close()
	sh := ids.Shape()
	if len(sh) != 2 {
		torch.Errorf("clip_text", "input ids must be (batch, length), got shape %v", sh)
	}
	if sh[1] > int64(m.Config.MaxPositionEmbeddings) {
		torch.Errorf("clip_text", "sequence length %d exceeds max_position_embeddings %d", sh[1], m.Config.MaxPositionEmbeddings)
	}
	dev := m.Device()
	if ids.DType() != torch.Int64 {
		ids = ids.To(torch.Int64)
	}
	if ids.Device() != dev {
		ids = ids.ToDevice(dev)
	}

	pos := m.PositionEmbedding.Weight.Narrow(0, 0, sh[1])
	x := m.TokenEmbedding.Forward(ids).Add(pos)
	out := &TextOutput{}
	if keepHidden {
		out.Hidden = append(out.Hidden, x)
	}
	for _, l := range m.Layers {
		x = l.Forward(x)
		if keepHidden {
			out.Hidden = append(out.Hidden, x)
		}
	}
	out.LastHidden = m.FinalLayerNorm.Forward(x)
	out.Pooled = m.pool(out.LastHidden, ids)
	s.Keep(out.LastHidden, out.Pooled)
	s.Keep(out.Hidden...)
	return out
}

// EOSPositions returns, for ids (B, L), the position that pooling reads in
// each row (int64, (B)): with the legacy eos_token_id 2 the position of the
// largest id, otherwise the first position holding eos_token_id (0 when a
// row has none), as transformers' CLIPTextTransformer does.
func (m *TextModel) EOSPositions(ids *torch.Tensor) *torch.Tensor {
	if m.Config.EOSTokenID == LegacyEOSTokenID {
		return ids.Argmax(-1, false)
	}
	return torch.Scoped(func() *torch.Tensor {
		return ids.EqScalar(float64(m.Config.EOSTokenID)).To(torch.Int32).Argmax(-1, false)
	})
}

// pool picks last (B, L, H) at each row's eos position.
func (m *TextModel) pool(last, ids *torch.Tensor) *torch.Tensor {
	s := torch.NewScope()
	defer s.Close()
	b, h := last.Size(0), last.Size(2)
	idx := m.EOSPositions(ids).To(torch.Int64).View([]int64{b, 1, 1}).Expand([]int64{b, 1, h})
	return s.Keep(last.Gather(1, idx).SqueezeDim(1))
}

// Forward applies the layer to x (B, L, hidden) with a causal mask.
func (l *TextEncoderLayer) Forward(x *torch.Tensor) *torch.Tensor {
	s := torch.NewScope()
	defer s.Close()
	x = x.Add(l.attention(l.LayerNorm1.Forward(x)))
	y := l.FC2.Forward(l.act(l.FC1.Forward(l.LayerNorm2.Forward(x))))
	return s.Keep(x.Add(y))
}

// attention is CLIPAttention with the causal mask and no padding mask.
func (l *TextEncoderLayer) attention(x *torch.Tensor) *torch.Tensor {
	sh := x.Shape()
	b, n, h := sh[0], sh[1], sh[2]
	split := func(t *torch.Tensor) *torch.Tensor {
		return t.View([]int64{b, n, l.Heads, h / l.Heads}).Transpose(1, 2)
	}
	q := split(l.QProj.Forward(x))
	k := split(l.KProj.Forward(x))
	v := split(l.VProj.Forward(x))
	a := torch.ScaledDotProductAttention(q, k, v, torch.AttentionOpts{Causal: true})
	return l.OutProj.Forward(a.Transpose(1, 2).Reshape([]int64{b, n, h}))
}

// WithoutPositionIDs hides PositionIDsKey (and any key ending in
// ".text_model.embeddings.position_ids", for prefixed state dicts) from
// src, so that checkpoints written by older transformers load. Closing the
// result closes src.
func WithoutPositionIDs(src nn.Source) nn.Source {
	if f, ok := src.(positionIDsFilter); ok {
		return f
	}
	return positionIDsFilter{src}
}

type positionIDsFilter struct{ nn.Source }

func isPositionIDs(key string) bool {
	return key == PositionIDsKey || strings.HasSuffix(key, "."+PositionIDsKey)
}

func (f positionIDsFilter) Names() []string {
	var out []string
	for _, n := range f.Source.Names() {
		if !isPositionIDs(n) {
			out = append(out, n)
		}
	}
	return out
}

func (f positionIDsFilter) Meta(key string) ([]int64, torch.DType, bool) {
	if isPositionIDs(key) {
		return nil, 0, false
	}
	return f.Source.Meta(key)
}

func (f positionIDsFilter) Load(key string) (*torch.Tensor, error) {
	if isPositionIDs(key) {
		return nil, fmt.Errorf("no tensor %q (position_ids is ignored)", key)
	}
	return f.Source.Load(key)
}
