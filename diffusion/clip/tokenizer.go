// Package clip implements the CLIP text front end used by Stable Diffusion.
package clip

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"math"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
)

// Default special tokens and length of a CLIP tokenizer, used when the
// tokenizer folder does not name them.
const (
	DefaultBOS       = "<|startoftext|>"
	DefaultEOS       = "<|endoftext|>"
	DefaultMaxLength = 77
)

// maxMerges is the number of merge rules transformers' CLIPTokenizer reads
// from merges.txt (lines 1 .. 49152-256-2 after the header); later lines are
// ignored.
const maxMerges = 49152 - 256 - 2

// Tokenizer is a CLIP byte-level BPE tokenizer that reproduces transformers'
// slow CLIPTokenizer with padding="max_length", truncation=True and
// max_length=MaxLength(). It is safe for concurrent use.
type Tokenizer struct {
	encoder map[string]int64
	bpe     *bpe

	// added holds the added tokens cut out of the raw text before cleaning
	// and BPE, longest first.
	added []addedToken

	bos, eos, unk, pad         string
	bosID, eosID, unkID, padID int64
	maxLen                     int
}

// addedToken is a token that transformers splits off the raw text before
// the tokenizer's own _tokenize runs.
type addedToken struct {
	content string
	id      int64
}

// Option configures LoadTokenizer.
type Option func(*options)

type options struct {
	pad    *string
	maxLen int
}

// WithPadToken overrides the pad token named by the tokenizer folder, as if
// special_tokens_map.json said pad_token: tok. The token must be in
// vocab.json. For example, WithPadToken(DefaultEOS) on SD2-base's folder
// gives CLIP-L's convention (pad = "<|endoftext|>", id 49407, used by FLUX),
// where '!' is an ordinary BPE character rather than an added token.
func WithPadToken(tok string) Option {
	return func(o *options) { o.pad = &tok }
}

// WithMaxLength overrides model_max_length (at least 2: bos and eos).
func WithMaxLength(n int) Option {
	return func(o *options) { o.maxLen = n }
}

// LoadTokenizer reads a Hugging Face CLIPTokenizer folder (for example the
// tokenizer/ folder of stabilityai/stable-diffusion-2-base): vocab.json and
// merges.txt are required; tokenizer_config.json and special_tokens_map.json
// are optional, the latter overriding the former as in transformers.
// Defaults: bos "<|startoftext|>", eos and unk "<|endoftext|>", pad = eos,
// model_max_length 77 (a missing or "unlimited" (>= 1e6) value gives 77).
//
// The added tokens split off the text before BPE are the special tokens bos,
// eos, unk and pad (duplicates removed), as in transformers. With SD2-base's
// pad token "!" this makes every '!' its own token with id 0 (diffusers issue
// #4153); with pad = eos only the two CLIP markers are split.
func LoadTokenizer(dir string, opts ...Option) (*Tokenizer, error) {
	var o options
	for _, opt := range opts {
		opt(&o)
	}

	vocabPath := filepath.Join(dir, "vocab.json")
	vocabData, err := os.ReadFile(vocabPath)
	if err != nil {
		return nil, fmt.Errorf("clip tokenizer: read vocab.json: %w", err)
	}
	var encoder map[string]int64
	if err := json.Unmarshal(vocabData, &encoder); err != nil {
		return nil, fmt.Errorf("clip tokenizer: %s: bad JSON (want an object token -> id): %w", vocabPath, err)
	}
	if len(encoder) == 0 {
		return nil, fmt.Errorf("clip tokenizer: %s: empty vocabulary", vocabPath)
	}

	mergesPath := filepath.Join(dir, "merges.txt")
	mergesData, err := os.ReadFile(mergesPath)
	if err != nil {
		return nil, fmt.Errorf("clip tokenizer: read merges.txt: %w", err)
	}
	ranks, err := parseMerges(string(mergesData), maxMerges, func(line int, text string) error {
		return fmt.Errorf("clip tokenizer: %s:%d: malformed merge %q (want two space-separated symbols)", mergesPath, line, text)
	})
	if err != nil {
		return nil, err
	}

	special := map[string]string{
		"bos_token": DefaultBOS,
		"eos_token": DefaultEOS,
		"unk_token": DefaultEOS,
	}
	maxLen := DefaultMaxLength
	var extra []addedToken

	cfgPath := filepath.Join(dir, "tokenizer_config.json")
	if cfg, err := readJSONObject(cfgPath); err != nil {
		return nil, err
	} else if cfg != nil {
		if err := readSpecialTokens(cfgPath, cfg, special); err != nil {
			return nil, err
		}
		if raw, ok := cfg["model_max_length"]; ok {
			if maxLen, err = parseMaxLength(raw); err != nil {
				return nil, fmt.Errorf("clip tokenizer: %s: model_max_length: %w", cfgPath, err)
			}
		}
		if raw, ok := cfg["added_tokens_decoder"]; ok {
			if extra, err = parseAddedTokensDecoder(raw); err != nil {
				return nil, fmt.Errorf("clip tokenizer: %s: added_tokens_decoder: %w", cfgPath, err)
			}
		}
	}
	mapPath := filepath.Join(dir, "special_tokens_map.json")
	if sm, err := readJSONObject(mapPath); err != nil {
		return nil, err
	} else if sm != nil {
		if err := readSpecialTokens(mapPath, sm, special); err != nil {
			return nil, err
		}
	}
	if o.pad != nil {
		special["pad_token"] = *o.pad
	}
	if _, ok := special["pad_token"]; !ok {
		special["pad_token"] = special["eos_token"]
	}
	if o.maxLen != 0 {
		maxLen = o.maxLen
	}
	if maxLen < 2 {
		return nil, fmt.Errorf("clip tokenizer: %s: max length %d is too small (need room for bos and eos)", dir, maxLen)
	}

	t := &Tokenizer{
		encoder: encoder,
		bos:     special["bos_token"],
		eos:     special["eos_token"],
		unk:     special["unk_token"],
		pad:     special["pad_token"],
		maxLen:  maxLen,
	}
	for _, s := range []struct {
		name string
		tok  string
		id   *int64
	}{
		{"bos", t.bos, &t.bosID},
		{"eos", t.eos, &t.eosID},
		{"unk", t.unk, &t.unkID},
		{"pad", t.pad, &t.padID},
	} {
		if s.tok == "" {
			return nil, fmt.Errorf("clip tokenizer: %s: empty %s token", dir, s.name)
		}
		id, ok := encoder[s.tok]
		if !ok {
			// added_tokens_decoder may give an id outside vocab.json.
			for _, a := range extra {
				if a.content == s.tok {
					id, ok = a.id, true
				}
			}
		}
		if !ok {
			return nil, fmt.Errorf("clip tokenizer: %s: %s token %q not in %s", dir, s.name, s.tok, vocabPath)
		}
		*s.id = id
	}

	seen := map[string]bool{}
	add := func(tok string, id int64) {
		if !seen[tok] {
			seen[tok] = true
			t.added = append(t.added, addedToken{tok, id})
		}
	}
	add(t.bos, t.bosID)
	add(t.eos, t.eosID)
	add(t.unk, t.unkID)
	add(t.pad, t.padID)
	for _, a := range extra {
		add(a.content, a.id)
	}
	// Longest first, so that at one position the longest added token wins
	// (transformers' Trie.split).
	sort.SliceStable(t.added, func(i, j int) bool {
		return len(t.added[i].content) > len(t.added[j].content)
	})
	t.bpe = newBPE(ranks, DefaultBOS, DefaultEOS)
	return t, nil
}

// readJSONObject reads a JSON object file; a missing file gives nil, nil.
func readJSONObject(path string) (map[string]json.RawMessage, error) {
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("clip tokenizer: read %s: %w", filepath.Base(path), err)
	}
	var m map[string]json.RawMessage
	if err := json.Unmarshal(data, &m); err != nil {
		return nil, fmt.Errorf("clip tokenizer: %s: bad JSON: %w", path, err)
	}
	return m, nil
}

// readSpecialTokens copies the bos/eos/unk/pad tokens present in m into
// special. A token is a string or an object with a "content" string (an
// AddedToken); null leaves the current value.
func readSpecialTokens(path string, m map[string]json.RawMessage, special map[string]string) error {
	for _, key := range []string{"bos_token", "eos_token", "unk_token", "pad_token"} {
		raw, ok := m[key]
		if !ok {
			continue
		}
		tok, present, err := parseTokenValue(raw)
		if err != nil {
			return fmt.Errorf("clip tokenizer: %s: %s: %w", path, key, err)
		}
		if present {
			special[key] = tok
		}
	}
	return nil
}

// parseTokenValue decodes a special token given as "tok" or {"content": "tok"}.
func parseTokenValue(raw json.RawMessage) (tok string, present bool, err error) {
	raw = bytes.TrimSpace(raw)
	switch {
	case len(raw) == 0 || bytes.Equal(raw, []byte("null")):
		return "", false, nil
	case raw[0] == '"':
		if err := json.Unmarshal(raw, &tok); err != nil {
			return "", false, err
		}
		return tok, true, nil
	case raw[0] == '{':
		var obj struct {
			Content *string `json:"content"`
		}
		if err := json.Unmarshal(raw, &obj); err != nil {
			return "", false, err
		}
		if obj.Content == nil {
			return "", false, errors.New(`token object has no "content" string`)
		}
		return *obj.Content, true, nil
	}
	return "", false, fmt.Errorf("want a string or an object with \"content\", got %s", raw)
}

// parseMaxLength decodes model_max_length. transformers writes a huge number
// (1e30, "no limit") for tokenizers without a length; CLIP's text encoder
// takes 77 positions, so such values give DefaultMaxLength.
func parseMaxLength(raw json.RawMessage) (int, error) {
	var f float64
	if err := json.Unmarshal(raw, &f); err != nil {
		return 0, err
	}
	if math.IsNaN(f) || f != math.Trunc(f) {
		return 0, fmt.Errorf("not an integer: %s", raw)
	}
	if f >= 1e6 {
		return DefaultMaxLength, nil
	}
	if f < 2 {
		return 0, fmt.Errorf("%v is too small (need room for bos and eos)", f)
	}
	return int(f), nil
}

// parseAddedTokensDecoder decodes the newer tokenizer_config.json field
// {"49406": {"content": "<|startoftext|>", ...}, ...}.
func parseAddedTokensDecoder(raw json.RawMessage) ([]addedToken, error) {
	var m map[string]json.RawMessage
	if err := json.Unmarshal(raw, &m); err != nil {
		return nil, err
	}
	out := make([]addedToken, 0, len(m))
	for k, v := range m {
		id, err := strconv.ParseInt(k, 10, 64)
		if err != nil {
			return nil, fmt.Errorf("id %q: %w", k, err)
		}
		tok, present, err := parseTokenValue(v)
		if err != nil {
			return nil, fmt.Errorf("id %s: %w", k, err)
		}
		if present && tok != "" {
			out = append(out, addedToken{tok, id})
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].id < out[j].id })
	return out, nil
}

// BOS returns the id of the begin-of-text token (49406 for CLIP).
func (t *Tokenizer) BOS() int64 { return t.bosID }

// EOS returns the id of the end-of-text token (49407 for CLIP).
func (t *Tokenizer) EOS() int64 { return t.eosID }

// PadID returns the id used for padding: 0 ("!") for SD2-base's folder,
// 49407 ("<|endoftext|>") for CLIP-L's convention.
func (t *Tokenizer) PadID() int64 { return t.padID }

// PadToken returns the pad token string.
func (t *Tokenizer) PadToken() string { return t.pad }

// MaxLength returns the length Encode pads and truncates to
// (model_max_length, normally 77).
func (t *Tokenizer) MaxLength() int { return t.maxLen }

// Tokens returns the token strings of text before conversion to ids:
// byte-level BPE symbols (with "</w>" word ends) and added tokens verbatim,
// without bos/eos and not truncated. It is meant for debugging and tests.
func (t *Tokenizer) Tokens(text string) []string {
	toks, _ := t.tokenize(text, false)
	return toks
}

// Encode tokenizes text like transformers' CLIPTokenizer(text,
// padding="max_length", max_length=MaxLength(), truncation=True): ids are
// [bos] + tokens[:MaxLength()-2] + [eos] padded with PadID() to MaxLength();
// mask is 1 on bos, tokens and eos and 0 on padding.
func (t *Tokenizer) Encode(text string) (ids []int64, mask []int64) {
	_, tokIDs := t.tokenize(text, true)
	if n := t.maxLen - 2; len(tokIDs) > n {
		tokIDs = tokIDs[:n]
	}
	ids = make([]int64, t.maxLen)
	mask = make([]int64, t.maxLen)
	ids[0], mask[0] = t.bosID, 1
	copy(ids[1:], tokIDs)
	for i := 1; i <= len(tokIDs); i++ {
		mask[i] = 1
	}
	end := len(tokIDs) + 1
	ids[end], mask[end] = t.eosID, 1
	for i := end + 1; i < t.maxLen; i++ {
		ids[i] = t.padID
	}
	return ids, mask
}

// EncodeBatch encodes each text with Encode.
func (t *Tokenizer) EncodeBatch(texts []string) (ids [][]int64, masks [][]int64) {
	ids = make([][]int64, len(texts))
	masks = make([][]int64, len(texts))
	for i, text := range texts {
		ids[i], masks[i] = t.Encode(text)
	}
	return ids, masks
}

// tokenize is transformers' PreTrainedTokenizer.tokenize followed by
// convert_tokens_to_ids: cut the added tokens out of the raw text, then
// clean, pre-tokenize and BPE-encode every other segment. It returns the
// token strings, and their ids when wantIDs is set.
func (t *Tokenizer) tokenize(text string, wantIDs bool) (toks []string, ids []int64) {
	emit := func(tok string, id int64) {
		toks = append(toks, tok)
		if wantIDs {
			ids = append(ids, id)
		}
	}
	segment := func(s string) {
		if s == "" {
			return
		}
		for _, pre := range pretokenRE.FindAllString(cleanText(s), -1) {
			var b strings.Builder
			for i := 0; i < len(pre); i++ {
				b.WriteString(byteEncoder[pre[i]])
			}
			for _, sym := range t.bpe.encode(b.String()) {
				id, ok := t.encoder[sym]
				if !ok {
					id = t.unkID
				}
				emit(sym, id)
			}
		}
	}
	start := 0
	for i := 0; i < len(text); {
		a, ok := t.addedAt(text, i)
		if !ok {
			i++
			continue
		}
		segment(text[start:i])
		emit(a.content, a.id)
		i += len(a.content)
		start = i
	}
	segment(text[start:])
	return toks, ids
}

// addedAt returns the longest added token that starts at text[i:].
func (t *Tokenizer) addedAt(text string, i int) (addedToken, bool) {
	for _, a := range t.added {
		if strings.HasPrefix(text[i:], a.content) {
			return a, true
		}
	}
	return addedToken{}, false
}
