package flow

import (
	"fmt"

	"github.com/dp2osr/dp2o/flow/transformer"
	"github.com/dp2osr/dp2o/torch"
)

// DefaultMaxSequenceLength is FluxControlNetPipeline's max_sequence_length:
// T5 pads and truncates prompts to it.
const DefaultMaxSequenceLength = 512

// PromptEmbeds is what encode_prompt returns: the T5 embedding Prompt
// (B, T, joint_attention_dim), CLIP-L's pooled output Pooled (B, 768 at
// full size) and the text position ids TextIDs (T, 3) of zeros. Close frees
// them.
type PromptEmbeds struct {
	Prompt, Pooled, TextIDs *torch.Tensor
}

// Close frees the tensors. It is idempotent.
func (e *PromptEmbeds) Close() {
	if e == nil {
		return
	}
	e.Prompt.Close()
	e.Pooled.Close()
	e.TextIDs.Close()
}

// NewPromptEmbeds wraps precomputed embeddings (for example the ones the
// official script computes once with encode_prompt) with their text ids.
// The tensors are aliased, not copied: the caller keeps its handles.
func NewPromptEmbeds(prompt, pooled *torch.Tensor) (e *PromptEmbeds, err error) {
	if prompt == nil || pooled == nil || prompt.Closed() || pooled.Closed() {
		return nil, fmt.Errorf("flux: prompt embeddings: nil or closed tensor")
	}
	ps, qs := prompt.Shape(), pooled.Shape()
	if len(ps) != 3 || len(qs) != 2 || ps[0] != qs[0] {
		return nil, fmt.Errorf("flux: prompt embeddings must be (B, T, D) and pooled (B, P), got %v and %v", ps, qs)
	}
	ids, err := transformer.TextIDs(ps[1], prompt.DType(), prompt.Device())
	if err != nil {
		return nil, err
	}
	return &PromptEmbeds{Prompt: prompt.Alias(), Pooled: pooled.Alias(), TextIDs: ids}, nil
}

// EncodePrompt is FluxPipeline.encode_prompt(prompt, prompt_2=prompt) for
// one prompt per image: CLIP-L ids (padded with the end token to 77) →
// pooler_output, and T5 ids (padded with <pad> to MaxSequenceLength) →
// last_hidden_state, each in its encoder's dtype, on p.Device.
func (p *CFLUX) EncodePrompt(prompts []string) (e *PromptEmbeds, err error) {
	if len(prompts) == 0 {
		return nil, fmt.Errorf("flux: no prompts")
	}
	if p == nil || p.Tokenizer == nil || p.TextEncoder == nil || p.Tokenizer2 == nil || p.TextEncoder2 == nil {
		return nil, fmt.Errorf("flux: the pipeline has no text encoders (loaded without them): pass prompt embeddings")
	}
	defer torch.Recover(&err)
	s := torch.NewScope()
	defer s.Close()

	rows, _ := p.Tokenizer.EncodeBatch(prompts)
	flat := make([]int64, 0, len(rows)*p.Tokenizer.MaxLength())
	for _, r := range rows {
		flat = append(flat, r...)
	}
	clipIDs := torch.FromSlice(flat, int64(len(rows)), int64(p.Tokenizer.MaxLength()))
	out, err := p.TextEncoder.Encode(clipIDs)
	if err != nil {
		return nil, fmt.Errorf("flux: CLIP text encoder: %w", err)
	}
	defer out.Close()
	pooled := out.Pooled.Alias()

	maxLen := p.MaxSequenceLength
	if maxLen <= 0 {
		maxLen = DefaultMaxSequenceLength
	}
	t5IDs, err := p.Tokenizer2.EncodeTensor(prompts, maxLen)
	if err != nil {
		return nil, fmt.Errorf("flux: T5 tokenizer: %w", err)
	}
	prompt, err := p.TextEncoder2.Forward(t5IDs)
	if err != nil {
		return nil, fmt.Errorf("flux: T5 encoder: %w", err)
	}
	e, err = NewPromptEmbeds(prompt, pooled)
	if err != nil {
		return nil, err
	}
	s.Keep(e.Prompt, e.Pooled, e.TextIDs)
	return e, nil
}
