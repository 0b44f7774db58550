package t5

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"os"
)

// tokenizerJSON is the part of a Hugging Face tokenizer.json this package
// reads.
type tokenizerJSON struct {
	AddedTokens []struct {
		ID         int64  `json:"id"`
		Content    string `json:"content"`
		SingleWord bool   `json:"single_word"`
		LStrip     bool   `json:"lstrip"`
		RStrip     bool   `json:"rstrip"`
		Normalized bool   `json:"normalized"`
	} `json:"added_tokens"`
	Normalizer   *normalizerJSON `json:"normalizer"`
	PreTokenizer *struct {
		Type          string `json:"type"`
		Replacement   string `json:"replacement"`
		PrependScheme string `json:"prepend_scheme"`
		AddPrefix     *bool  `json:"add_prefix_space"`
		Split         *bool  `json:"split"`
	} `json:"pre_tokenizer"`
	PostProcessor *struct {
		Type   string `json:"type"`
		Single []struct {
			Sequence     *struct{ ID string } `json:"Sequence"`
			SpecialToken *struct{ ID string } `json:"SpecialToken"`
		} `json:"single"`
		SpecialTokens map[string]struct {
			IDs []int64 `json:"ids"`
		} `json:"special_tokens"`
	} `json:"post_processor"`
	Model struct {
		Type         string               `json:"type"`
		UnkID        *int64               `json:"unk_id"`
		Vocab        [][2]json.RawMessage `json:"vocab"`
		ByteFallback bool                 `json:"byte_fallback"`
	} `json:"model"`
}

type normalizerJSON struct {
	Type                string           `json:"type"`
	Normalizers         []normalizerJSON `json:"normalizers"`
	PrecompiledCharsmap string           `json:"precompiled_charsmap"`
	StripLeft           bool             `json:"strip_left"`
	StripRight          bool             `json:"strip_right"`
	Pattern             struct {
		Regex  *string `json:"Regex"`
		String *string `json:"String"`
	} `json:"pattern"`
	Content string `json:"content"`
}

// loadTokenizerJSON reads a fast-tokenizer file with a Unigram model, the
// T5 normalizer sequence and a Metaspace pre-tokenizer.
func loadTokenizerJSON(path string) (*Tokenizer, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var doc tokenizerJSON
	if err := json.Unmarshal(data, &doc); err != nil {
		return nil, fmt.Errorf("not a tokenizer.json: %w", err)
	}
	if doc.Model.Type != "Unigram" {
		return nil, fmt.Errorf("model type %q is not supported (want Unigram)", doc.Model.Type)
	}
	pieces := make([]string, len(doc.Model.Vocab))
	scores := make([]float64, len(doc.Model.Vocab))
	for i, e := range doc.Model.Vocab {
		if err := json.Unmarshal(e[0], &pieces[i]); err != nil {
			return nil, fmt.Errorf("model.vocab[%d]: %w", i, err)
		}
		if err := json.Unmarshal(e[1], &scores[i]); err != nil {
			return nil, fmt.Errorf("model.vocab[%d]: %w", i, err)
		}
	}
	if doc.Model.UnkID == nil {
		return nil, errors.New("the Unigram model has no unk_id")
	}
	model, err := newUnigram(pieces, scores, *doc.Model.UnkID, doc.Model.ByteFallback)
	if err != nil {
		return nil, err
	}
	t := &Tokenizer{model: model, prepend: prependNever}
	for _, a := range doc.AddedTokens {
		if a.SingleWord || a.LStrip || a.RStrip || a.Normalized {
			return nil, fmt.Errorf("added token %q: single_word, lstrip, rstrip and normalized added tokens are not supported", a.Content)
		}
		if a.ID < 0 || a.ID >= int64(len(pieces)) {
			return nil, fmt.Errorf("added token %q: id %d outside the vocabulary", a.Content, a.ID)
		}
		t.added = append(t.added, addedToken{content: a.Content, id: a.ID})
	}
	if doc.Normalizer != nil {
		if err := t.setNormalizer(*doc.Normalizer); err != nil {
			return nil, err
		}
	}
	if p := doc.PreTokenizer; p != nil {
		if p.Type != "Metaspace" || p.Replacement != metaspace {
			return nil, fmt.Errorf("pre_tokenizer %s (replacement %q) is not supported (want Metaspace with %q)", p.Type, p.Replacement, metaspace)
		}
		switch {
		case p.PrependScheme != "":
			t.prepend = p.PrependScheme
		case p.AddPrefix == nil || *p.AddPrefix: // tokenizers < 0.15
			t.prepend = prependAlways
		}
		if t.prepend != prependAlways && t.prepend != prependFirst && t.prepend != prependNever {
			return nil, fmt.Errorf("pre_tokenizer: unknown prepend_scheme %q", t.prepend)
		}
		t.split = p.Split == nil || *p.Split
	}
	eos := ""
	if pp := doc.PostProcessor; pp != nil {
		if pp.Type != "TemplateProcessing" {
			return nil, fmt.Errorf("post_processor %s is not supported (want TemplateProcessing)", pp.Type)
		}
		seen := false
		for _, piece := range pp.Single {
			switch {
			case piece.Sequence != nil:
				if seen {
					return nil, errors.New("post_processor: the single template holds $A twice")
				}
				seen = true
			case piece.SpecialToken != nil:
				st, ok := pp.SpecialTokens[piece.SpecialToken.ID]
				if !ok {
					return nil, fmt.Errorf("post_processor: special token %q is not defined", piece.SpecialToken.ID)
				}
				for _, id := range st.IDs {
					if id < 0 || id >= int64(len(pieces)) {
						return nil, fmt.Errorf("post_processor: special token %q: id %d outside the vocabulary", piece.SpecialToken.ID, id)
					}
				}
				if seen {
					t.suffix = append(t.suffix, st.IDs...)
					eos = piece.SpecialToken.ID
				} else {
					t.prefix = append(t.prefix, st.IDs...)
				}
			}
		}
		if !seen {
			return nil, errors.New("post_processor: the single template has no $A")
		}
	}
	if eos == "" {
		eos = "</s>"
	}
	if err := t.finish("<pad>", eos); err != nil {
		return nil, err
	}
	return t, nil
}

// setNormalizer takes a normalizer or a Sequence of Precompiled, Strip and
// Replace(" {2,}" → "▁") steps, in that order.
func (t *Tokenizer) setNormalizer(n normalizerJSON) error {
	steps := []normalizerJSON{n}
	if n.Type == "Sequence" {
		steps = n.Normalizers
	}
	stage := 0 // the order the tokenizer applies: charsmap, strip, collapse
	for _, s := range steps {
		switch {
		case s.Type == "Precompiled" && stage < 1:
			blob, err := base64.StdEncoding.DecodeString(s.PrecompiledCharsmap)
			if err != nil {
				return fmt.Errorf("normalizer: precompiled_charsmap: %w", err)
			}
			if len(blob) > 0 {
				if t.norm, err = parseCharsmap(blob); err != nil {
					return fmt.Errorf("normalizer: %w", err)
				}
			}
			stage = 1
		case s.Type == "Strip" && stage < 2:
			t.stripLeft, t.stripRight = s.StripLeft, s.StripRight
			stage = 2
		case s.Type == "Replace" && stage < 3 && s.Pattern.Regex != nil && *s.Pattern.Regex == " {2,}" && s.Content == metaspace:
			t.collapseSpace = true
			stage = 3
		default:
			return fmt.Errorf("normalizer %s is not supported here (want Precompiled, Strip, Replace(\" {2,}\", %q) in that order)", s.Type, metaspace)
		}
	}
	return nil
}
