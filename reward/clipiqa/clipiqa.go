// Package clipiqa is pyiqa's CLIP-IQA+ ("clipiqa+"): OpenAI CLIP RN50 with
// learned prompt contexts, no-reference, higher-is-better, in [0, 1].
// Importing the package registers the metric with reward.Open.
//
// The image is normalised with CLIP's mean and std and encoded at its own
// size (no resize, no crop; the attention pool runs without positional
// embedding). The score is softmax over the (good, bad) prompt pair of the
// scaled cosine similarities, taken at "good".
package clipiqa

import (
	"fmt"

	"github.com/dp2osr/dp2o/torch"
	"github.com/dp2osr/dp2o/torch/nn"
	"github.com/dp2osr/dp2o/vision/clip"
)

// NCtx is the number of learned context tokens of each prompt.
const NCtx = 16

// nameLen is pyiqa's hard-coded class-name length ("good/bad", "photo",
// "."), inserted between the two halves of the context.
const nameLen = 3

// openAIMean and openAIStd are OpenAI CLIP's normalisation
// (OPENAI_CLIP_MEAN/STD).
var (
	openAIMean = [3]float64{0.48145466, 0.4578275, 0.40821073}
	openAIStd  = [3]float64{0.26862954, 0.26130258, 0.27577711}
)

// PromptTokens are clip.tokenize of pyiqa's two prompts,
// "X X X X X X X X X X X X X X X X Good photo.." and "… Bad photo..": the
// CLIP BPE ids of <|startoftext|>, "x</w>" ×16, "good</w>" / "bad</w>",
// "photo</w>", "..</w>", <|endoftext|>, then zero padding to 77.
func PromptTokens() [2][]int64 {
	var out [2][]int64
	for i, word := range []int64{886, 2103} { // good</w>, bad</w>
		ids := make([]int64, 77)
		ids[0] = 49406
		for j := 1; j <= NCtx; j++ {
			ids[j] = 343 // x</w>
		}
		copy(ids[NCtx+1:], []int64{word, 1125, 852, 49407}) // photo</w>, ..</w>, <|endoftext|>
		out[i] = ids
	}
	return out
}

// Model is CLIP-IQA+ in eval mode.
type Model struct {
	Visual *clip.ModifiedResNet
	Text   *clip.Text
	// Ctx is the learned context (2, NCtx, width).
	Ctx        *torch.Tensor
	LogitScale *torch.Tensor
	tokens     *torch.Tensor // (2, 77) int64
	eot        *torch.Tensor // (2) int64
	// textFeatures are the prompt features (2, EmbedDim), computed once.
	textFeatures *torch.Tensor
	mean, std    *torch.Tensor
}

// Tap receives named intermediates during the forward passes (the names of
// the fixture's io.json without their case prefix); t is valid only during
// the call.
type Tap func(name string, t *torch.Tensor)

// New builds the model from b: the CLIP state dict keys ("visual.…",
// "transformer.…", "token_embedding.weight", "positional_embedding",
// "ln_final.…", "text_projection", "logit_scale") and
// "prompt_learner.ctx" ((2, NCtx, width), or (NCtx, width) shared by both
// prompts). The prompt features are computed here (tap may be nil).
func New(b *nn.Builder, ctxShared bool, tap Tap) (m *Model, err error) {
	m = &Model{}
	defer func() {
		if err != nil {
			m.Close()
			m = nil
		}
	}()
	defer torch.Recover(&err)
	if tap == nil {
		tap = func(string, *torch.Tensor) {}
	}
	if m.Visual, err = clip.NewModifiedResNet(b.Sub("visual"), clip.RN50); err != nil {
		return nil, err
	}
	if m.Text, err = clip.NewText(b, clip.RN50Text); err != nil {
		return nil, err
	}
	w := clip.RN50Text.Width
	if ctxShared {
		m.Ctx = b.Get("prompt_learner.ctx", NCtx, w)
	} else {
		m.Ctx = b.Get("prompt_learner.ctx", 2, NCtx, w)
	}
	m.LogitScale = b.Get("logit_scale")
	dev := b.Device()
	if dev.Type == torch.DeviceMeta {
		return m, nil
	}
	s := torch.NewScope()
	defer s.Close()
	toks := PromptTokens()
	m.tokens = torch.Stack([]*torch.Tensor{torch.FromSlice(toks[0], 77), torch.FromSlice(toks[1], 77)}, 0).ToDevice(dev)
	m.eot = m.tokens.Argmax(-1, false)
	vec := func(v [3]float64) *torch.Tensor {
		return torch.FromSlice([]float32{float32(v[0]), float32(v[1]), float32(v[2])}, 1, 3, 1, 1).ToDevice(dev)
	}
	m.mean, m.std = vec(openAIMean), vec(openAIStd)
	for _, t := range b.Params().List() {
		if !t.Closed() && t.Device().Type == torch.DeviceMeta { // a missing key: Finish reports it
			return m, nil
		}
	}
	torch.NoGrad(func() { m.textFeatures = m.promptFeatures(tap) })
	for _, t := range []*torch.Tensor{m.tokens, m.eot, m.mean, m.std, m.textFeatures} {
		torch.Unscope(t)
	}
	return m, nil
}

// promptFeatures is PromptLearner.forward: token embeddings of the two
// prompts with the learned context spliced into the middle, through the
// text transformer.
func (m *Model) promptFeatures(tap Tap) *torch.Tensor {
	tap("prompt.tokens", m.tokens)
	tap("prompt.eot_index", m.eot)
	emb := m.Text.TokenEmbedding.Forward(m.tokens)
	prefix := emb.Narrow(1, 0, 1)
	suffix := emb.Narrow(1, 1+NCtx, emb.Size(1)-1-NCtx)
	tap("prompt.token_prefix", prefix)
	tap("prompt.token_suffix", suffix)
	ctx := m.Ctx
	if ctx.Dim() == 2 {
		ctx = ctx.Unsqueeze(0).Expand([]int64{2, -1, -1})
	}
	tap("prompt.ctx", ctx)
	half := int64(NCtx / 2)
	var prompts []*torch.Tensor
	for i := int64(0); i < 2; i++ {
		pi, si, ci := prefix.Narrow(0, i, 1), suffix.Narrow(0, i, 1), ctx.Narrow(0, i, 1)
		prompts = append(prompts, torch.Cat([]*torch.Tensor{
			pi, ci.Narrow(1, 0, half), si.Narrow(1, 0, nameLen), ci.Narrow(1, half, NCtx-half),
			si.Narrow(1, nameLen, si.Size(1)-nameLen),
		}, 1))
	}
	p := torch.Cat(prompts, 0)
	tap("prompt.embeddings", p)
	f := m.Text.Encode(p, m.eot)
	tap("prompt.text_features", f)
	return f
}

// TextFeatures are the prompt features (2, EmbedDim), not normalised.
func (m *Model) TextFeatures() *torch.Tensor { return m.textFeatures }

// Forward scores a (N,3,H,W) batch in [0,1]: (N,1) in the caller's scope.
func (m *Model) Forward(x *torch.Tensor, tap Tap) *torch.Tensor {
	if tap == nil {
		tap = func(string, *torch.Tensor) {}
	}
	s := torch.NewScope()
	defer s.Close()
	dt := m.Ctx.DType()
	x = x.To(dt).Sub(m.mean.To(dt)).Div(m.std.To(dt))
	tap("normalized_input", x)
	feats := m.Visual.Features(x)
	for i, name := range []string{"visual.stem", "visual.layer1", "visual.layer2", "visual.layer3", "visual.layer4"} {
		tap(name, feats[i])
	}
	img := m.Visual.Pool.Pool2d(feats[len(feats)-1])
	tap("image_feature", img)
	img = img.Div(img.NormDims(2, []int64{-1}, true))
	txt := m.textFeatures.Div(m.textFeatures.NormDims(2, []int64{-1}, true))
	logits := img.Mul(m.LogitScale.Exp()).Matmul(txt.Transpose(0, 1))
	tap("logits", logits)
	n := logits.Size(0)
	probs := logits.Reshape([]int64{n, -1, 2}).Softmax(-1)
	return s.Keep(probs.Select(-1, 0).MeanDims([]int64{1}, true))
}

// Close frees what the model owns beyond the builder's parameters.
func (m *Model) Close() {
	if m.Visual != nil {
		m.Visual.Close()
	}
	for _, t := range []*torch.Tensor{m.tokens, m.eot, m.mean, m.std, m.textFeatures} {
		t.Close()
	}
}

// checkCtx validates the shape of a learned context tensor.
func checkCtx(shape []int64, width int64) (shared bool, err error) {
	switch {
	case len(shape) == 3 && shape[0] == 2 && shape[1] == NCtx && shape[2] == width:
		return false, nil
	case len(shape) == 2 && shape[0] == NCtx && shape[1] == width:
		return true, nil
	}
	return false, fmt.Errorf("learned prompt context of shape %v: want [2 %d %d] or [%d %d]", shape, NCtx, width, NCtx, width)
}
