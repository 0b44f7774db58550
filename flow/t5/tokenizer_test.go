package t5

import (
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"unicode/utf8"

	"github.com/stretchr/testify/require"

	"github.com/dp2osr/dp2o/internal/testutil"
)

const tokenizerDir = "flux/t5_tokenizer"

// tokenizerCases is cases.json of the t5_tokenizer fixture.
type tokenizerCases struct {
	PadID         int64   `json:"pad_id"`
	EOSID         int64   `json:"eos_id"`
	UnkID         int64   `json:"unk_id"`
	MaxLengths    []int   `json:"max_lengths"`
	UnkScore      float64 `json:"unk_score"`
	MinPieceScore float64 `json:"min_piece_score"`
	Cases         []struct {
		Name       string   `json:"name"`
		Text       string   `json:"text"`
		NumTokens  int      `json:"num_tokens"`
		Tokens     []string `json:"tokens"`
		IDs        []int64  `json:"ids"`
		Normalized string   `json:"normalized"`
		Pretokens  []string `json:"pretokens"`
		// ids_<L> for every L of MaxLengths, read separately.
		Raw map[string]json.RawMessage `json:"-"`
	} `json:"cases"`
}

func readTokenizerCases(tb testing.TB) tokenizerCases {
	tb.Helper()
	data, err := os.ReadFile(testutil.Fixture(tb, tokenizerDir+"/cases.json"))
	require.NoError(tb, err)
	var c tokenizerCases
	require.NoError(tb, json.Unmarshal(data, &c))
	var raw struct {
		Cases []map[string]json.RawMessage `json:"cases"`
	}
	require.NoError(tb, json.Unmarshal(data, &raw))
	require.Len(tb, raw.Cases, len(c.Cases))
	for i := range c.Cases {
		c.Cases[i].Raw = raw.Cases[i]
	}
	require.NotEmpty(tb, c.Cases)
	require.NotEmpty(tb, c.MaxLengths)
	return c
}

// paddedIDs is the case's ids_<L>.
func paddedIDs(tb testing.TB, raw map[string]json.RawMessage, l int) []int64 {
	tb.Helper()
	msg, ok := raw[fmt.Sprintf("ids_%d", l)]
	require.True(tb, ok, "no ids_%d", l)
	var ids []int64
	require.NoError(tb, json.Unmarshal(msg, &ids))
	return ids
}

var (
	tokOnce   sync.Once
	tokLoaded map[string]*Tokenizer
	tokErr    error
)

// tokenizers loads the fixture tokenizer once from each published form:
// tokenizer.json, spiece.model (with tokenizer_config.json beside it) and
// the folder.
func tokenizers(tb testing.TB) map[string]*Tokenizer {
	tb.Helper()
	tokOnce.Do(func() {
		dir := testutil.Fixture(tb, tokenizerDir)
		tokLoaded = map[string]*Tokenizer{}
		for _, name := range []string{TokenizerJSONFile, SpieceFile, ""} {
			t, err := LoadTokenizer(filepath.Join(dir, name))
			if err != nil {
				tokErr = err
				return
			}
			key := name
			if key == "" {
				key = "folder"
			}
			tokLoaded[key] = t
		}
	})
	require.NoError(tb, tokErr)
	return tokLoaded
}

// TestTokenizerCases checks every case of cases.json with every loader:
// the normalised text and the words of the pre-tokenizer where the text
// holds no added token, the tokens, the untruncated ids, and the ids FLUX
// feeds the encoder for each max length (one prompt and the whole batch).
func TestTokenizerCases(t *testing.T) {
	c := readTokenizerCases(t)
	for name, tok := range tokenizers(t) {
		t.Run(name, func(t *testing.T) {
			require.Equal(t, c.PadID, tok.PadID())
			require.Equal(t, c.EOSID, tok.EOSID())
			require.Equal(t, c.UnkID, tok.model.unkID)
			require.Equal(t, c.MinPieceScore, tok.model.minScore)
			require.Equal(t, c.UnkScore, tok.model.minScore-unkPenalty)
			var texts []string
			for _, tc := range c.Cases {
				texts = append(texts, tc.Text)
				if !tok.hasAddedToken(tc.Text) {
					require.Equal(t, tc.Normalized, tok.normalize(tc.Text), "%s: normalized", tc.Name)
					got := tok.preTokenize(tc.Normalized, true)
					require.True(t, slices.Equal(tc.Pretokens, got), "%s: pretokens %q, want %q", tc.Name, got, tc.Pretokens)
				}
				e, err := tok.encode(tc.Text, true)
				require.NoError(t, err, tc.Name)
				require.Equal(t, tc.Tokens, e.tokens, "%s: tokens", tc.Name)
				require.Equal(t, tc.IDs, e.ids, "%s: ids", tc.Name)
				require.Len(t, tc.IDs, tc.NumTokens, tc.Name)
				ids, err := tok.Tokenize(tc.Text)
				require.NoError(t, err)
				require.Equal(t, tc.IDs, ids, "%s: Tokenize", tc.Name)
				for _, l := range c.MaxLengths {
					got, err := tok.Encode([]string{tc.Text}, l)
					require.NoError(t, err)
					require.Equal(t, paddedIDs(t, tc.Raw, l), got[0], "%s: ids_%d", tc.Name, l)
				}
			}
			for _, l := range c.MaxLengths {
				rows, err := tok.Encode(texts, l)
				require.NoError(t, err)
				ts, err := tok.EncodeTensor(texts, l)
				require.NoError(t, err)
				require.Equal(t, []int64{int64(len(texts)), int64(l)}, ts.Shape())
				flat := ts.Int64s()
				ts.Close()
				for i, tc := range c.Cases {
					want := paddedIDs(t, tc.Raw, l)
					require.Equal(t, want, rows[i], "%s: batch ids_%d", tc.Name, l)
					require.Equal(t, want, flat[i*l:(i+1)*l], "%s: tensor ids_%d", tc.Name, l)
				}
			}
		})
	}
}

// TestTokenizerFuzz checks the seeded random strings of fuzz_cases.json.
func TestTokenizerFuzz(t *testing.T) {
	data, err := os.ReadFile(testutil.Fixture(t, tokenizerDir+"/fuzz_cases.json"))
	require.NoError(t, err)
	var f struct {
		Cases []struct {
			Text string  `json:"text"`
			IDs  []int64 `json:"ids"`
		} `json:"cases"`
	}
	require.NoError(t, json.Unmarshal(data, &f))
	require.NotEmpty(t, f.Cases)
	for name, tok := range tokenizers(t) {
		bad := 0
		for i, tc := range f.Cases {
			got, err := tok.Tokenize(tc.Text)
			require.NoError(t, err)
			if !slices.Equal(tc.IDs, got) {
				e, _ := tok.encode(tc.Text, true)
				t.Errorf("%s: fuzz case %d %q (%+q): ids %v, want %v (tokens %q)", name, i, tc.Text, tc.Text, got, tc.IDs, e.tokens)
				if bad++; bad > 5 {
					t.FailNow()
				}
			}
		}
	}
}

// hasAddedToken reports whether text contains an added token's string.
func (t *Tokenizer) hasAddedToken(text string) bool {
	for _, a := range t.added {
		if strings.Contains(text, a.content) {
			return true
		}
	}
	return false
}

// TestTokenizerBadInput checks that bad text, lengths and files are errors.
func TestTokenizerBadInput(t *testing.T) {
	tok := tokenizers(t)["folder"]
	_, err := tok.Tokenize("ok \xff bad")
	require.ErrorContains(t, err, "UTF-8")
	_, err = tok.Encode([]string{"fine", "\xc3"}, DefaultMaxLength)
	require.ErrorContains(t, err, "prompt 1")
	_, err = tok.Encode([]string{"fine"}, 0)
	require.ErrorContains(t, err, "max length")
	_, err = tok.EncodeTensor(nil, DefaultMaxLength)
	require.Error(t, err)
	// The shortest length keeps only </s>.
	rows, err := tok.Encode([]string{"a long prompt"}, 1)
	require.NoError(t, err)
	require.Equal(t, [][]int64{{tok.EOSID()}}, rows)
	// No prompts: no rows.
	rows, err = tok.Encode(nil, DefaultMaxLength)
	require.NoError(t, err)
	require.Empty(t, rows)

	dir := t.TempDir()
	write := func(name, body string) string {
		p := filepath.Join(dir, name)
		require.NoError(t, os.WriteFile(p, []byte(body), 0o644))
		return p
	}
	for _, tc := range []struct{ name, path, want string }{
		{"missing", filepath.Join(dir, "nope.json"), "no such file"},
		{"empty folder", dir, "neither"},
		{"not JSON", write("a.json", "{"), "not a tokenizer.json"},
		{"BPE model", write("b.json", `{"model": {"type": "BPE"}}`), "Unigram"},
		{"no unk", write("c.json", `{"model": {"type": "Unigram", "vocab": [["a", -1]]}}`), "unk_id"},
		{"bad unk", write("d.json", `{"model": {"type": "Unigram", "unk_id": 3, "vocab": [["a", -1]]}}`), "unk_id 3"},
		{"bad vocab", write("e.json", `{"model": {"type": "Unigram", "unk_id": 0, "vocab": [[1, -1]]}}`), "vocab[0]"},
		{"bad normalizer", write("f.json", `{"normalizer": {"type": "NFKC"}, "model": {"type": "Unigram", "unk_id": 0, "vocab": [["<unk>", 0]]}}`), "normalizer NFKC"},
		{"bad charsmap", write("g.json", `{"normalizer": {"type": "Precompiled", "precompiled_charsmap": "AAAAAQ=="}, "model": {"type": "Unigram", "unk_id": 0, "vocab": [["<unk>", 0]]}}`), "charsmap"},
		{"bad pre-tokenizer", write("h.json", `{"pre_tokenizer": {"type": "Whitespace"}, "model": {"type": "Unigram", "unk_id": 0, "vocab": [["<unk>", 0]]}}`), "pre_tokenizer"},
		{"lstrip added token", write("i.json", `{"added_tokens": [{"id": 0, "content": "<unk>", "lstrip": true}], "model": {"type": "Unigram", "unk_id": 0, "vocab": [["<unk>", 0]]}}`), "lstrip"},
		{"no pad", write("j.json", `{"model": {"type": "Unigram", "unk_id": 0, "vocab": [["<unk>", 0], ["</s>", 0]]}}`), "pad"},
		{"bad template id", write("m.json", `{"post_processor": {"type": "TemplateProcessing", "single": [{"Sequence": {"id": "A"}}, {"SpecialToken": {"id": "</s>"}}], "special_tokens": {"</s>": {"ids": [9]}}}, "model": {"type": "Unigram", "unk_id": 0, "vocab": [["<unk>", 0]]}}`), "id 9"},
		{"not a protobuf", write("k.model", "\xff\xff\xff"), "SentencePiece"},
		{"empty spiece", write("l.model", ""), "no pieces"},
	} {
		_, err := LoadTokenizer(tc.path)
		require.Error(t, err, tc.name)
		require.Contains(t, err.Error(), tc.want, tc.name)
		require.Contains(t, err.Error(), "t5 tokenizer", tc.name)
		t.Logf("%s: %v", tc.name, err)
	}

	// A truncated spiece.model is an error, not a crash.
	data, err := os.ReadFile(testutil.Fixture(t, tokenizerDir+"/"+SpieceFile))
	require.NoError(t, err)
	_, err = LoadTokenizer(write("cut.model", string(data[:len(data)/2])))
	require.ErrorContains(t, err, "SentencePiece")
	t.Log(err)
}

// TestTokenizerEncoderInputs checks that every row of input ids the
// encoder fixture uses is what the tokenizer gives for one of the
// tokenizer fixture's prompts at that length.
func TestTokenizerEncoderInputs(t *testing.T) {
	testutil.NoLeak(t)
	c := readTokenizerCases(t)
	tok := tokenizers(t)["folder"]
	io := testutil.Tensors(t, testutil.Fixture(t, encoderDir+"/io.safetensors"))
	found := 0
	for name, x := range io {
		if !strings.HasSuffix(name, "input_ids") {
			continue
		}
		sh := x.Shape()
		require.Len(t, sh, 2, name)
		l := int(sh[1])
		flat := x.Int64s()
		for r := 0; r < int(sh[0]); r++ {
			row := flat[r*l : (r+1)*l]
			ok := false
			for _, tc := range c.Cases {
				ids, err := tok.Encode([]string{tc.Text}, l)
				require.NoError(t, err)
				if slices.Equal(ids[0], row) {
					ok = true
					break
				}
			}
			require.True(t, ok, "%s row %d is no tokenizer case's ids at length %d", name, r, l)
			found++
		}
	}
	require.NotZero(t, found)
}

// FuzzTokenize checks that any text tokenizes without a panic: valid UTF-8
// gives ids inside the vocabulary ending in </s>, the same from
// tokenizer.json as from spiece.model, and invalid UTF-8 an error. The
// seeds are the fixture's prompts.
func FuzzTokenize(f *testing.F) {
	for _, tc := range readTokenizerCases(f).Cases {
		f.Add(tc.Text)
	}
	tok := tokenizers(f)[TokenizerJSONFile]
	sp := tokenizers(f)[SpieceFile]
	f.Fuzz(func(t *testing.T, text string) {
		spIDs, spErr := sp.Tokenize(text)
		ids, err := tok.Tokenize(text)
		if !utf8.ValidString(text) {
			require.Error(t, err)
			return
		}
		require.NoError(t, err)
		require.NoError(t, spErr)
		require.Equal(t, ids, spIDs, "tokenizer.json and spiece.model disagree")
		require.NotEmpty(t, ids)
		require.Equal(t, tok.EOSID(), ids[len(ids)-1])
		for _, id := range ids {
			require.True(t, id >= 0 && id < int64(tok.VocabSize()), "id %d", id)
		}
	})
}

// FuzzCharsmap checks that a precompiled charsmap blob, however corrupt,
// is rejected or normalises any text without a panic. The seeds are the
// fixture's charsmap, cut and bit-flipped.
func FuzzCharsmap(f *testing.F) {
	data, err := os.ReadFile(testutil.Fixture(f, tokenizerDir+"/"+TokenizerJSONFile))
	require.NoError(f, err)
	var doc tokenizerJSON
	require.NoError(f, json.Unmarshal(data, &doc))
	var blob []byte
	for _, n := range append([]normalizerJSON{*doc.Normalizer}, doc.Normalizer.Normalizers...) {
		if n.Type == "Precompiled" {
			blob, err = base64.StdEncoding.DecodeString(n.PrecompiledCharsmap)
			require.NoError(f, err)
		}
	}
	require.NotEmpty(f, blob)
	f.Add(blob, "Ａ́ ①́ ﬁ́x é́ café")
	f.Add(blob[:len(blob)/2], "abc")
	// Bit flips inside the trie (the replacement strings stay UTF-8).
	flipped := append([]byte(nil), blob...)
	trie := 4 + int(binary.LittleEndian.Uint32(blob))
	require.Less(f, trie, len(blob))
	for i := 4; i < trie; i += 97 {
		flipped[i] ^= 0x5a
	}
	_, err = parseCharsmap(flipped)
	require.NoError(f, err)
	f.Add(flipped, "x\u3000y\u00a0z")
	f.Fuzz(func(t *testing.T, b []byte, text string) {
		m, err := parseCharsmap(b)
		if err != nil {
			return
		}
		m.normalize(text)
	})
}
