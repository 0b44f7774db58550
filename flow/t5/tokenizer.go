package t5

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"unicode"
	"unicode/utf8"

	"github.com/dp2osr/dp2o/torch"
)

// DefaultMaxLength is FLUX's max_sequence_length for T5 prompts.
const DefaultMaxLength = 512

// File names of a published tokenizer folder (FLUX.1-dev's tokenizer_2/).
const (
	TokenizerJSONFile   = "tokenizer.json"
	SpieceFile          = "spiece.model"
	TokenizerConfigFile = "tokenizer_config.json"
)

// metaspace is the word-boundary marker ▁ (U+2581).
const metaspace = "\u2581"

// Prepend schemes of the Metaspace pre-tokenizer.
const (
	prependAlways = "always"
	prependFirst  = "first"
	prependNever  = "never"
)

// Tokenizer is T5TokenizerFast: added tokens split out of the raw text, the
// SentencePiece normaliser, the Metaspace pre-tokenizer, a Unigram model and
// the "$A </s>" template. It is safe for concurrent use.
type Tokenizer struct {
	model *unigram
	// norm is the precompiled charsmap (nil: none); then the right strip
	// and the collapsing of space runs into one ▁, when enabled.
	norm          *charsmap
	stripLeft     bool
	stripRight    bool
	collapseSpace bool
	prepend       string // prependAlways, prependFirst or prependNever
	split         bool   // Metaspace split before every ▁
	added         []addedToken
	addedByLen    []addedToken // longest first, for leftmost-longest matching
	addedFirst    [256]bool    // first bytes of the added tokens
	prefix        []int64      // template ids before $A
	suffix        []int64      // template ids after $A (</s>)
	padID         int64
	eosID         int64
}

// addedToken is a token matched on the raw text before normalisation.
type addedToken struct {
	content string
	id      int64
}

// PadID is the id of <pad>, which Encode pads with.
func (t *Tokenizer) PadID() int64 { return t.padID }

// EOSID is the id of </s>, which ends every encoded prompt.
func (t *Tokenizer) EOSID() int64 { return t.eosID }

// VocabSize is the number of ids (pieces and added tokens).
func (t *Tokenizer) VocabSize() int { return len(t.model.pieces) }

// LoadTokenizer reads a tokenizer: a folder (tokenizer.json, or else
// spiece.model with tokenizer_config.json when present), a tokenizer.json
// file or a spiece.model file.
func LoadTokenizer(path string) (*Tokenizer, error) {
	st, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("t5 tokenizer: %w", err)
	}
	if st.IsDir() {
		for _, name := range []string{TokenizerJSONFile, SpieceFile} {
			p := filepath.Join(path, name)
			if _, err := os.Stat(p); err == nil {
				return LoadTokenizer(p)
			}
		}
		return nil, fmt.Errorf("t5 tokenizer: %s holds neither %s nor %s", path, TokenizerJSONFile, SpieceFile)
	}
	var tok *Tokenizer
	if strings.HasSuffix(path, ".json") {
		tok, err = loadTokenizerJSON(path)
	} else {
		tok, err = loadSpiece(path, filepath.Join(filepath.Dir(path), TokenizerConfigFile))
	}
	if err != nil {
		return nil, fmt.Errorf("t5 tokenizer: %s: %w", path, err)
	}
	return tok, nil
}

// finish sorts the added tokens for matching and resolves pad and eos.
func (t *Tokenizer) finish(pad, eos string) error {
	t.addedByLen = append([]addedToken(nil), t.added...)
	sort.SliceStable(t.addedByLen, func(i, j int) bool { return len(t.addedByLen[i].content) > len(t.addedByLen[j].content) })
	for _, a := range t.added {
		if a.content == "" {
			return errors.New("empty added token")
		}
		t.addedFirst[a.content[0]] = true
	}
	id, ok := t.tokenID(pad)
	if !ok {
		return fmt.Errorf("no pad token %q", pad)
	}
	t.padID = id
	if id, ok = t.tokenID(eos); !ok {
		return fmt.Errorf("no eos token %q", eos)
	}
	t.eosID = id
	return nil
}

// tokenID is the id of an added token or piece.
func (t *Tokenizer) tokenID(s string) (int64, bool) {
	for _, a := range t.added {
		if a.content == s {
			return a.id, true
		}
	}
	id, ok := t.model.ids[s]
	return id, ok
}

// Tokenize returns the ids of text with the template applied (ending in
// </s>), without truncation or padding.
func (t *Tokenizer) Tokenize(text string) ([]int64, error) {
	e, err := t.encode(text, false)
	if err != nil {
		return nil, err
	}
	return e.ids, nil
}

// encode runs the whole pipeline on text, with the template.
func (t *Tokenizer) encode(text string, tokens bool) (*encoding, error) {
	if !utf8.ValidString(text) {
		return nil, errors.New("t5 tokenizer: text is not valid UTF-8")
	}
	e := &encoding{wantToks: tokens}
	for _, id := range t.prefix {
		e.add(id, t.model.pieces[id])
	}
	t.appendText(e, text)
	for _, id := range t.suffix {
		e.add(id, t.model.pieces[id])
	}
	return e, nil
}

// appendText splits added tokens out of text (leftmost match, longest at
// a position) and encodes the segments between them.
func (t *Tokenizer) appendText(e *encoding, text string) {
	start := 0
	for pos := 0; pos < len(text); {
		a, ok := t.addedAt(text[pos:])
		if !ok {
			_, n := utf8.DecodeRuneInString(text[pos:])
			pos += n
			continue
		}
		t.appendSegment(e, text[start:pos], start == 0)
		e.add(a.id, a.content)
		pos += len(a.content)
		start = pos
	}
	t.appendSegment(e, text[start:], start == 0)
}

func (t *Tokenizer) addedAt(s string) (addedToken, bool) {
	if !t.addedFirst[s[0]] {
		return addedToken{}, false
	}
	for _, a := range t.addedByLen {
		if strings.HasPrefix(s, a.content) {
			return a, true
		}
	}
	return addedToken{}, false
}

// appendSegment normalises, pre-tokenizes and encodes one segment; first
// tells whether it starts the text (for the "first" prepend scheme).
func (t *Tokenizer) appendSegment(e *encoding, seg string, first bool) {
	for _, w := range t.preTokenize(t.normalize(seg), first) {
		t.model.encode(e, w)
	}
}

// preTokenize is the Metaspace pre-tokenizer on a normalised segment:
// spaces become ▁, ▁ is prepended per the prepend scheme, and the segment
// is split before every ▁ (each word is ▁ and what follows up to the next).
func (t *Tokenizer) preTokenize(s string, first bool) []string {
	if s == "" {
		return nil
	}
	s = strings.ReplaceAll(s, " ", metaspace)
	if !strings.HasPrefix(s, metaspace) && (t.prepend == prependAlways || (t.prepend == prependFirst && first)) {
		s = metaspace + s
	}
	if !t.split {
		return []string{s}
	}
	var words []string
	for len(s) > 0 {
		i := strings.Index(s[1:], metaspace)
		if i < 0 {
			break
		}
		words = append(words, s[:i+1])
		s = s[i+1:]
	}
	return append(words, s)
}

// normalize is the normalizer sequence: Precompiled, Strip, Replace(" {2,}", "▁").
func (t *Tokenizer) normalize(s string) string {
	if t.norm != nil {
		s = t.norm.normalize(s)
	}
	isSpace := func(r rune) bool { return unicode.Is(unicode.White_Space, r) }
	if t.stripLeft {
		s = strings.TrimLeftFunc(s, isSpace)
	}
	if t.stripRight {
		s = strings.TrimRightFunc(s, isSpace)
	}
	if t.collapseSpace && strings.Contains(s, "  ") {
		var sb strings.Builder
		for i := 0; i < len(s); {
			j := i
			for j < len(s) && s[j] == ' ' {
				j++
			}
			switch {
			case j-i >= 2:
				sb.WriteString(metaspace)
				i = j
			case j > i:
				sb.WriteByte(' ')
				i = j
			default:
				sb.WriteByte(s[i])
				i++
			}
		}
		s = sb.String()
	}
	return s
}

// Encode tokenizes each text as FLUX's _get_t5_prompt_embeds asks
// T5TokenizerFast to (padding="max_length", max_length=maxLen,
// truncation=True): the ids end in </s>, a longer prompt keeps its first
// maxLen−1 ids then </s>, a shorter one is padded with <pad>. Every row has
// exactly maxLen ids.
func (t *Tokenizer) Encode(texts []string, maxLen int) ([][]int64, error) {
	special := len(t.prefix) + len(t.suffix)
	if maxLen < special || maxLen < 1 {
		return nil, fmt.Errorf("t5 tokenizer: max length %d leaves no room for the %d special tokens", maxLen, special)
	}
	out := make([][]int64, len(texts))
	for i, text := range texts {
		ids, err := t.Tokenize(text)
		if err != nil {
			return nil, fmt.Errorf("%w (prompt %d)", err, i)
		}
		if len(ids) > maxLen {
			body := ids[len(t.prefix) : len(ids)-len(t.suffix)]
			body = body[:maxLen-special]
			ids = append(append(append([]int64(nil), t.prefix...), body...), t.suffix...)
		}
		for len(ids) < maxLen {
			ids = append(ids, t.padID)
		}
		out[i] = ids
	}
	return out, nil
}

// EncodeTensor is Encode returning an int64 CPU tensor (len(texts), maxLen),
// the input_ids the encoder takes. The caller closes it.
func (t *Tokenizer) EncodeTensor(texts []string, maxLen int) (*torch.Tensor, error) {
	if len(texts) == 0 {
		return nil, errors.New("t5 tokenizer: no prompts")
	}
	rows, err := t.Encode(texts, maxLen)
	if err != nil {
		return nil, err
	}
	flat := make([]int64, 0, len(rows)*maxLen)
	for _, r := range rows {
		flat = append(flat, r...)
	}
	return torch.FromSlice(flat, int64(len(rows)), int64(maxLen)), nil
}
