package qalign

import (
	"github.com/dp2osr/dp2o/torch"
	"github.com/dp2osr/dp2o/torch/nn"
)

// Model is MPLUGOwl2LlamaForCausalLM as Q-Align scores with it: vision
// tower, visual abstractor, the visual tokens spliced into the prompt, the
// modality-adaptive LLaMA decoder, and lm_head at the last position only.
type Model struct {
	cfg    Config
	vision *vision
	abs    *abstractor
	llm    *llama
}

// New builds the model from b with the published checkpoint's key names
// (the state dict of MPLUGOwl2LlamaForCausalLM: "model.vision_model.…",
// "model.visual_abstractor.…", "model.layers.N.…", "lm_head.weight").
// The abstractor's q_pos_embed / k_pos_embed buffers are read when the
// source has them and computed otherwise (on the meta device they are
// requested like every key).
func New(b *nn.Builder, cfg Config) (m *Model, err error) {
	if err := cfg.Check(); err != nil {
		return nil, err
	}
	defer torch.Recover(&err)
	m = &Model{cfg: cfg}
	m.llm = newLlama(b, cfg)
	m.vision = newVision(b.Sub("model.vision_model"), cfg.Vision)
	if m.abs, err = newAbstractor(b.Sub("model.visual_abstractor"), cfg.Abstractor, cfg.HiddenSize); err != nil {
		return nil, err
	}
	return m, nil
}

// Config is the model's configuration.
func (m *Model) Config() Config { return m.cfg }

// Close frees what the model computed itself (the position buffers of a
// checkpoint without them); the weights belong to the builder's Params.
func (m *Model) Close() {
	if m != nil && m.abs != nil {
		m.abs.close()
	}
}

// Logits runs the model on pixel_values (B,3,S,S) in the model's dtype
// and device with the prompt p, and returns the logits at the last
// position (B, vocab). The tensors belong to the caller's scope. Like the
// tensor ops, it panics with a *torch.Error on bad input (a prompt
// without exactly one placeholder, pixels of another size): run it under
// torch.Try.
func (m *Model) Logits(pixels *torch.Tensor, p Prompt, tap Tap) *torch.Tensor {
	if tap == nil {
		tap = func(string, *torch.Tensor) {}
	}
	dev := pixels.Device()
	n := pixels.Size(0)
	vis := m.vision.forward(pixels, tap)
	visual := m.abs.forward(vis, tap)
	if err := p.Check(m.cfg.VocabSize); err != nil {
		torch.Errorf("qalign", "prompt: %v", err)
	}
	if sh := pixels.Shape(); len(sh) != 4 || sh[1] != m.cfg.Vision.NumChannels {
		torch.Errorf("qalign", "pixel_values of shape %v: want (B,%d,%d,%d)", sh, m.cfg.Vision.NumChannels,
			m.cfg.Vision.ImageSize, m.cfg.Vision.ImageSize)
	}
	at := int64(-1)
	for i, id := range p.IDs {
		if id == ImageTokenID {
			at = int64(i)
		}
	}
	before := torch.FromSlice(p.IDs[:at]).ToDevice(dev)
	after := torch.FromSlice(p.IDs[at+1:]).ToDevice(dev)
	nv := visual.Size(1)
	total := int64(len(p.IDs)) - 1 + nv
	emb := func(ids *torch.Tensor) *torch.Tensor {
		return torch.Embedding(m.llm.embed, ids).Unsqueeze(0).Expand([]int64{n, -1, -1})
	}
	h := torch.Cat([]*torch.Tensor{emb(before), visual, emb(after)}, 1)
	tap("inputs_embeds", h)
	ind := torch.Cat([]*torch.Tensor{torch.Zeros([]int64{n, at}, torch.Int64, dev),
		torch.Ones([]int64{n, nv}, torch.Int64, dev), torch.Zeros([]int64{n, total - at - nv}, torch.Int64, dev)}, 1)
	tap("modality_indicators", ind)
	h = m.llm.forward(h, layout{at: at, n: nv, total: total}, tap)
	last := h.Narrow(1, total-1, 1).SqueezeDim(1)
	logits := torch.Linear(last, m.llm.lmHead, nil)
	tap("last_logits", logits)
	return logits
}

// Score returns the Q-Align scores (B,) of pixel_values: the softmax of the
// last-position logits at the level ids, weighted by the level values, in
// the model's dtype. The tensors belong to the caller's scope.
func (m *Model) Score(pixels *torch.Tensor, p Prompt, tap Tap) *torch.Tensor {
	if tap == nil {
		tap = func(string, *torch.Tensor) {}
	}
	logits := m.Logits(pixels, p, tap)
	lv := logits.IndexSelect(1, torch.FromSlice(p.LevelIDs).ToDevice(logits.Device()))
	tap("level_logits", lv)
	probs := lv.Softmax(-1)
	tap("level_probs", probs)
	w := torch.FromSlice(p.Weights).To(probs.DType()).ToDevice(probs.Device())
	s := probs.Matmul(w)
	tap("score", s)
	return s
}
