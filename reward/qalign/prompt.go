package qalign

import (
	"fmt"
	"strings"
)

// The Q-Align quality prompt of pyiqa's QAlign (task "quality", input
// "image"), the image token of mPLUG-Owl2, its placeholder id, and the
// level words whose logits give the score.
const (
	QualityPrompt = "USER: How would you rate the quality of this image?\n<|image|>\nASSISTANT: The quality of the image is"
	ImageToken    = "<|image|>"
	ImageTokenID  = -200
)

// LevelWords are the rating words, best first; LevelWeights their values.
var (
	LevelWords   = []string{"excellent", "good", "fair", "poor", "bad"}
	LevelWeights = []float64{5, 4, 3, 2, 1}
)

// Prompt is a tokenised prompt: the ids with one placeholder for the
// image, and the ids of the level words.
type Prompt struct {
	// IDs are the prompt's token ids with ImageTokenID where the visual
	// tokens go.
	IDs []int64
	// LevelIDs are the token ids whose logits at the last position are
	// compared, in the order of Weights.
	LevelIDs []int64
	// Weights are the values of the levels (the score is the
	// softmax-weighted sum).
	Weights []float64
}

// ImageTokenIDs is mPLUG-Owl2's tokenizer_image_token: prompt split at
// imageToken, each chunk tokenised with BOS, the BOS kept for the first
// chunk only, placeholder between the chunks.
func ImageTokenIDs(t *Tokenizer, prompt, imageToken string, placeholder int64) []int64 {
	var chunks [][]int64
	for _, c := range strings.Split(prompt, imageToken) {
		chunks = append(chunks, t.EncodeBOS(c))
	}
	var ids []int64
	offset := 0
	if len(chunks) > 0 && len(chunks[0]) > 0 && chunks[0][0] == t.BOS() {
		offset = 1
		ids = append(ids, chunks[0][0])
	}
	for i, c := range chunks {
		if i > 0 {
			// The separator [placeholder]*(offset+1) loses its first
			// offset ids like every chunk: one placeholder either way.
			ids = append(ids, placeholder)
		}
		ids = append(ids, c[offset:]...)
	}
	return ids
}

// LevelIDs is pyiqa's preferential_ids_: for each word the second id of
// tokenizer(word).input_ids (the first piece after BOS).
func LevelIDs(t *Tokenizer, words []string) ([]int64, error) {
	out := make([]int64, len(words))
	for i, w := range words {
		ids := t.EncodeBOS(w)
		if len(ids) < 2 {
			return nil, fmt.Errorf("level word %q tokenises to %v", w, ids)
		}
		out[i] = ids[1]
	}
	return out, nil
}

// QualityPromptOf tokenises pyiqa's quality prompt and level words.
func QualityPromptOf(t *Tokenizer) (Prompt, error) {
	lv, err := LevelIDs(t, LevelWords)
	if err != nil {
		return Prompt{}, err
	}
	return Prompt{IDs: ImageTokenIDs(t, QualityPrompt, ImageToken, ImageTokenID), LevelIDs: lv,
		Weights: append([]float64(nil), LevelWeights...)}, nil
}

// Check validates the prompt against a vocabulary of vocab ids: exactly
// one placeholder, ids inside the vocabulary, as many weights as levels.
func (p Prompt) Check(vocab int64) error {
	n := 0
	for _, id := range p.IDs {
		switch {
		case id == ImageTokenID:
			n++
		case id < 0 || id >= vocab:
			return fmt.Errorf("prompt id %d outside the vocabulary of %d", id, vocab)
		}
	}
	if n != 1 {
		return fmt.Errorf("prompt holds %d image placeholders, want 1", n)
	}
	if len(p.LevelIDs) == 0 || len(p.LevelIDs) != len(p.Weights) {
		return fmt.Errorf("%d level ids and %d weights", len(p.LevelIDs), len(p.Weights))
	}
	for _, id := range p.LevelIDs {
		if id < 0 || id >= vocab {
			return fmt.Errorf("level id %d outside the vocabulary of %d", id, vocab)
		}
	}
	return nil
}
