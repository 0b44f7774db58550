package clip

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/dp2osr/dp2o/internal/testutil"
)

// tokenizerFixtureDir is the tokenizer fixture folder: sd2/clip_tokenizer
// under $DP2O_FIXTURES when set, else under testdata/.
func tokenizerFixtureDir(t testing.TB) string {
	t.Helper()
	return testutil.Fixture(t, "sd2/clip_tokenizer")
}

type tokenizerCase struct {
	Name               string   `json:"name"`
	Text               string   `json:"text"`
	CleanedText        string   `json:"cleaned_text"`
	Pretokens          []string `json:"pretokens"`
	TokensSD2          []string `json:"tokens_sd2"`
	IDsSD2             []int64  `json:"ids_sd2"`
	MaskSD2            []int64  `json:"attention_mask_sd2"`
	TokensCLIPL        []string `json:"tokens_clip_l"`
	IDsCLIPL           []int64  `json:"ids_clip_l"`
	MaskCLIPL          []int64  `json:"attention_mask_clip_l"`
	NumTokens          int      `json:"num_tokens_untruncated"`
	Truncated          bool     `json:"truncated"`
	SD2DiffersFromCLIP bool     `json:"sd2_differs_from_clip_l_before_padding"`
}

type tokenizerCases struct {
	BOSID     int64           `json:"bos_id"`
	EOSID     int64           `json:"eos_id"`
	MaxLength int             `json:"max_length"`
	Cases     []tokenizerCase `json:"cases"`
}

// fixtureVocab reads the fixture folder's vocab.json: the expected ids of
// the hand-written checks below are looked up there, never written down.
func fixtureVocab(t testing.TB, dir string) map[string]int64 {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(dir, "vocab.json"))
	require.NoError(t, err)
	var v map[string]int64
	require.NoError(t, json.Unmarshal(data, &v))
	return v
}

// vocabIDs maps tokens to their ids in vocab, failing on an unknown one.
func vocabIDs(t testing.TB, vocab map[string]int64, toks ...string) []int64 {
	t.Helper()
	ids := make([]int64, len(toks))
	for i, tok := range toks {
		id, ok := vocab[tok]
		require.True(t, ok, "token %q not in vocab.json", tok)
		ids[i] = id
	}
	return ids
}

func loadTokenizerCases(t testing.TB, dir string) tokenizerCases {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(dir, "cases.json"))
	require.NoError(t, err)
	var c tokenizerCases
	require.NoError(t, json.Unmarshal(data, &c))
	require.NotEmpty(t, c.Cases)
	return c
}

// copyTokenizerDir copies vocab.json, merges.txt and tokenizer_config.json of
// src into a temp dir and returns it.
func copyTokenizerDir(t *testing.T, src string, files ...string) string {
	t.Helper()
	dst := t.TempDir()
	for _, f := range files {
		data, err := os.ReadFile(filepath.Join(src, f))
		require.NoError(t, err)
		require.NoError(t, os.WriteFile(filepath.Join(dst, f), data, 0o644))
	}
	return dst
}

func TestTokenizerLoadSD2(t *testing.T) {
	dir := tokenizerFixtureDir(t)
	tok, err := LoadTokenizer(dir)
	require.NoError(t, err)
	vocab, cases := fixtureVocab(t, dir), loadTokenizerCases(t, dir)
	require.Equal(t, vocabIDs(t, vocab, DefaultBOS, DefaultEOS), []int64{tok.BOS(), tok.EOS()})
	require.Equal(t, cases.BOSID, tok.BOS())
	require.Equal(t, cases.EOSID, tok.EOS())
	// SD2's tokenizer_config.json pads with "!".
	require.Equal(t, "!", tok.PadToken())
	require.Equal(t, vocabIDs(t, vocab, "!")[0], tok.PadID())
	require.Equal(t, cases.MaxLength, tok.MaxLength())
}

// TestTokenizerCases checks every case of cases.json in both conventions:
// SD2 (the folder as is, pad "!") and CLIP-L (pad "<|endoftext|>"), the
// latter built both with WithPadToken and with a special_tokens_map.json
// override in a copy of the folder.
func TestTokenizerCases(t *testing.T) {
	dir := tokenizerFixtureDir(t)
	cases := loadTokenizerCases(t, dir)

	sd2, err := LoadTokenizer(dir)
	require.NoError(t, err)
	require.Equal(t, cases.BOSID, sd2.BOS())
	require.Equal(t, cases.EOSID, sd2.EOS())
	require.Equal(t, cases.MaxLength, sd2.MaxLength())

	clipL, err := LoadTokenizer(dir, WithPadToken(DefaultEOS))
	require.NoError(t, err)
	require.Equal(t, cases.EOSID, clipL.PadID())

	// Same convention through the file override, as a CLIP-L folder has it.
	mapDir := copyTokenizerDir(t, dir, "vocab.json", "merges.txt", "tokenizer_config.json")
	require.NoError(t, os.WriteFile(filepath.Join(mapDir, "special_tokens_map.json"),
		[]byte(`{"bos_token": {"content": "<|startoftext|>"}, "eos_token": "<|endoftext|>", "pad_token": {"content": "<|endoftext|>", "lstrip": false}, "unk_token": "<|endoftext|>"}`), 0o644))
	clipLFile, err := LoadTokenizer(mapDir)
	require.NoError(t, err)
	require.Equal(t, cases.EOSID, clipLFile.PadID())

	for _, c := range cases.Cases {
		t.Run(c.Name, func(t *testing.T) {
			require.Equal(t, c.CleanedText, cleanText(c.Text), "cleaned text")
			pre := pretokenRE.FindAllString(c.CleanedText, -1)
			if len(c.Pretokens) == 0 {
				require.Empty(t, pre, "pretokens")
			} else {
				require.Equal(t, c.Pretokens, pre, "pretokens")
			}

			checkConvention(t, sd2, c.Text, c.TokensSD2, c.IDsSD2, c.MaskSD2)
			checkConvention(t, clipL, c.Text, c.TokensCLIPL, c.IDsCLIPL, c.MaskCLIPL)
			checkConvention(t, clipLFile, c.Text, c.TokensCLIPL, c.IDsCLIPL, c.MaskCLIPL)
			require.Len(t, c.TokensCLIPL, c.NumTokens)
			require.Equal(t, c.NumTokens > 75, c.Truncated)
		})
	}
}

func checkConvention(t *testing.T, tok *Tokenizer, text string, wantTokens []string, wantIDs, wantMask []int64) {
	t.Helper()
	got := tok.Tokens(text)
	if len(wantTokens) == 0 {
		require.Empty(t, got, "tokens (pad %q)", tok.PadToken())
	} else {
		require.Equal(t, wantTokens, got, "tokens (pad %q)", tok.PadToken())
	}
	ids, mask := tok.Encode(text)
	require.Equal(t, wantIDs, ids, "ids (pad %q)", tok.PadToken())
	require.Equal(t, wantMask, mask, "attention mask (pad %q)", tok.PadToken())
}

func TestTokenizerEncodeBatch(t *testing.T) {
	dir := tokenizerFixtureDir(t)
	cases := loadTokenizerCases(t, dir)
	tok, err := LoadTokenizer(dir)
	require.NoError(t, err)
	texts := make([]string, len(cases.Cases))
	for i, c := range cases.Cases {
		texts[i] = c.Text
	}
	ids, masks := tok.EncodeBatch(texts)
	require.Len(t, ids, len(texts))
	require.Len(t, masks, len(texts))
	for i, c := range cases.Cases {
		require.Equal(t, c.IDsSD2, ids[i], c.Name)
		require.Equal(t, c.MaskSD2, masks[i], c.Name)
	}
}

// TestTokenizerConcurrent encodes all cases from several goroutines at once
// (run with -race to check the BPE cache locking).
func TestTokenizerConcurrent(t *testing.T) {
	dir := tokenizerFixtureDir(t)
	cases := loadTokenizerCases(t, dir)
	tok, err := LoadTokenizer(dir)
	require.NoError(t, err)
	var wg sync.WaitGroup
	errs := make(chan string, 8*len(cases.Cases))
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for _, c := range cases.Cases {
				ids, _ := tok.Encode(c.Text)
				for i := range ids {
					if ids[i] != c.IDsSD2[i] {
						errs <- c.Name
						break
					}
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for name := range errs {
		t.Errorf("concurrent mismatch in %s", name)
	}
}

// TestTokenizerKnownAnswers checks behaviours the fixture README describes
// (SD2 splits every "!" off as its pad token; CLIP-L keeps "!!" whole;
// special tokens in the text are kept verbatim), with the expected ids
// looked up in the folder's own vocab.json.
func TestTokenizerKnownAnswers(t *testing.T) {
	dir := tokenizerFixtureDir(t)
	vocab := fixtureVocab(t, dir)
	sd2, err := LoadTokenizer(dir)
	require.NoError(t, err)
	clipL, err := LoadTokenizer(dir, WithPadToken(DefaultEOS))
	require.NoError(t, err)
	bos, eos, pad := sd2.BOS(), sd2.EOS(), sd2.PadID()

	words := []string{"a</w>", "photo</w>", "of</w>", "an</w>", "astronaut</w>", "riding</w>", "a</w>", "horse</w>"}
	ids, _ := clipL.Encode("a photo of an astronaut riding a horse")
	want := append(append([]int64{bos}, vocabIDs(t, vocab, words...)...), eos)
	require.Equal(t, want, ids[:len(want)])

	ids, mask := sd2.Encode("! !! !!!")
	require.Equal(t, []int64{bos, pad, pad, pad, pad, pad, pad, eos, pad}, ids[:9])
	require.Equal(t, []int64{1, 1, 1, 1, 1, 1, 1, 1, 0}, mask[:9])
	ids, _ = clipL.Encode("! !! !!!")
	want = append(append([]int64{bos}, vocabIDs(t, vocab, "!</w>", "!!</w>", "!!!</w>")...), eos, eos)
	require.Equal(t, want, ids[:6])

	// Special tokens in the text are split off verbatim.
	require.Equal(t, []string{"a</w>", "<|endoftext|>", "b</w>"}, clipL.Tokens("a<|endoftext|>b"))
	ids, _ = clipL.Encode("<|startoftext|>cat")
	require.Equal(t, []int64{bos, bos, vocabIDs(t, vocab, "cat</w>")[0], eos}, ids[:4])
	// After lower-casing, the CLIP regex and the seeded BPE cache map them too.
	require.Equal(t, []string{"<|endoftext|>"}, clipL.Tokens("<|EndOfText|>"))

	// Empty text: bos, eos, padding.
	ids, mask = sd2.Encode("")
	require.Equal(t, []int64{bos, eos, pad}, ids[:3])
	require.Equal(t, []int64{1, 1, 0}, mask[:3])
	require.Empty(t, sd2.Tokens(" \t\n "))
}

func TestTokenizerTruncation(t *testing.T) {
	dir := tokenizerFixtureDir(t)
	vocab := fixtureVocab(t, dir)
	tok, err := LoadTokenizer(dir, WithPadToken(DefaultEOS))
	require.NoError(t, err)
	n := tok.MaxLength()
	text := strings.Repeat("cat ", n+20)
	require.Len(t, tok.Tokens(text), n+20)
	ids, mask := tok.Encode(text)
	require.Len(t, ids, n)
	require.Equal(t, tok.BOS(), ids[0])
	require.Equal(t, tok.EOS(), ids[n-1])
	cat := vocabIDs(t, vocab, "cat</w>")[0]
	for i := 1; i < n-1; i++ {
		require.Equal(t, cat, ids[i])
	}
	for _, m := range mask {
		require.Equal(t, int64(1), m)
	}

	short, err := LoadTokenizer(dir, WithMaxLength(5))
	require.NoError(t, err)
	ids, mask = short.Encode("bird, branch, tree")
	want := append(append([]int64{tok.BOS()}, vocabIDs(t, vocab, "bird</w>", ",</w>", "branch</w>")...), tok.EOS())
	require.Equal(t, want, ids)
	require.Equal(t, []int64{1, 1, 1, 1, 1}, mask)
}

func TestTokenizerPyLower(t *testing.T) {
	require.Equal(t, "i\u0307stanbul", pyLower("İSTANBUL"))
	require.Equal(t, "οδος", pyLower("ΟΔΟΣ"))
	require.Equal(t, "σ", pyLower("Σ"))
	// Expected values from CPython 3.11 str.lower.
	require.Equal(t, "ασ.β", pyLower("ΑΣ.Β"))
	require.Equal(t, "ας. β", pyLower("ΑΣ. Β"))
	require.Equal(t, "ας\u0301", pyLower("ΑΣ\u0301"))
	require.Equal(t, "ασα", pyLower("ΑΣΑ"))
	require.Equal(t, ".σ", pyLower(".Σ"))
	require.Equal(t, "ας1", pyLower("ΑΣ1"))
	require.Equal(t, "ος ", pyLower("ΟΣ "))
	require.Equal(t, "straße über", pyLower("STRAßE ÜBER"))
}

func TestTokenizerCleanText(t *testing.T) {
	require.Equal(t, "a b c", cleanText("\u00a0 A\u2003\u3000B\x1c\x1fc\u2029"))
	require.Equal(t, "a\ufffdb", cleanText("a\xffb"))
	require.Equal(t, "", cleanText(" \t\r\n\v\f"))
	// Python str.isspace for every code point that Go's unicode.IsSpace lacks.
	for _, r := range []rune{0x1c, 0x1d, 0x1e, 0x1f} {
		require.True(t, isPySpace(r))
	}
	require.False(t, isPySpace(0x200b)) // zero width space is not whitespace
}

func TestTokenizerDefaultsWithoutConfig(t *testing.T) {
	dir := copyTokenizerDir(t, tokenizerFixtureDir(t), "vocab.json", "merges.txt")
	tok, err := LoadTokenizer(dir)
	require.NoError(t, err)
	vocab := fixtureVocab(t, dir)
	// CLIPTokenizer's defaults: its special tokens, pad = eos, 77 positions.
	require.Equal(t, vocabIDs(t, vocab, DefaultBOS, DefaultEOS, DefaultEOS), []int64{tok.BOS(), tok.EOS(), tok.PadID()})
	require.Equal(t, DefaultMaxLength, tok.MaxLength())
	require.Equal(t, []string{"wow</w>", "!</w>"}, tok.Tokens("wow!"))
}

func TestTokenizerConfigOnly(t *testing.T) {
	// tokenizer_config.json alone (pad "!") gives the SD2 convention; a map
	// file overrides it.
	src := tokenizerFixtureDir(t)
	dir := copyTokenizerDir(t, src, "vocab.json", "merges.txt", "tokenizer_config.json")
	tok, err := LoadTokenizer(dir)
	require.NoError(t, err)
	require.Equal(t, vocabIDs(t, fixtureVocab(t, dir), "!")[0], tok.PadID())
	require.Equal(t, []string{"wow</w>", "!"}, tok.Tokens("wow!"))
}

func TestTokenizerErrors(t *testing.T) {
	src := tokenizerFixtureDir(t)

	t.Run("missing vocab", func(t *testing.T) {
		dir := copyTokenizerDir(t, src, "merges.txt")
		_, err := LoadTokenizer(dir)
		require.Error(t, err)
		require.Contains(t, err.Error(), "vocab.json")
		require.ErrorIs(t, err, os.ErrNotExist)
	})
	t.Run("missing merges", func(t *testing.T) {
		dir := copyTokenizerDir(t, src, "vocab.json")
		_, err := LoadTokenizer(dir)
		require.ErrorContains(t, err, "merges.txt")
		require.ErrorIs(t, err, os.ErrNotExist)
	})
	t.Run("bad vocab json", func(t *testing.T) {
		dir := copyTokenizerDir(t, src, "merges.txt")
		require.NoError(t, os.WriteFile(filepath.Join(dir, "vocab.json"), []byte(`{"a": 1,`), 0o644))
		_, err := LoadTokenizer(dir)
		require.ErrorContains(t, err, "vocab.json")
		require.ErrorContains(t, err, "bad JSON")
	})
	t.Run("malformed merges", func(t *testing.T) {
		dir := copyTokenizerDir(t, src, "vocab.json")
		require.NoError(t, os.WriteFile(filepath.Join(dir, "merges.txt"), []byte("#version: 0.2\ni n\nt h e\na n\n"), 0o644))
		_, err := LoadTokenizer(dir)
		require.ErrorContains(t, err, "merges.txt:3")
		require.ErrorContains(t, err, "malformed merge")
	})
	t.Run("bad config json", func(t *testing.T) {
		dir := copyTokenizerDir(t, src, "vocab.json", "merges.txt")
		require.NoError(t, os.WriteFile(filepath.Join(dir, "tokenizer_config.json"), []byte(`not json`), 0o644))
		_, err := LoadTokenizer(dir)
		require.ErrorContains(t, err, "tokenizer_config.json")
		require.ErrorContains(t, err, "bad JSON")
	})
	t.Run("bad special token", func(t *testing.T) {
		dir := copyTokenizerDir(t, src, "vocab.json", "merges.txt")
		require.NoError(t, os.WriteFile(filepath.Join(dir, "special_tokens_map.json"), []byte(`{"pad_token": 7}`), 0o644))
		_, err := LoadTokenizer(dir)
		require.ErrorContains(t, err, "special_tokens_map.json")
		require.ErrorContains(t, err, "pad_token")
	})
	t.Run("pad not in vocab", func(t *testing.T) {
		dir := copyTokenizerDir(t, src, "vocab.json", "merges.txt")
		require.NoError(t, os.WriteFile(filepath.Join(dir, "special_tokens_map.json"), []byte(`{"pad_token": "<|pad|>"}`), 0o644))
		_, err := LoadTokenizer(dir)
		require.ErrorContains(t, err, `pad token "<|pad|>" not in`)
		require.ErrorContains(t, err, "vocab.json")
	})
	t.Run("pad option not in vocab", func(t *testing.T) {
		_, err := LoadTokenizer(src, WithPadToken("<|nope|>"))
		require.ErrorContains(t, err, `pad token "<|nope|>" not in`)
	})
	t.Run("bad max length", func(t *testing.T) {
		dir := copyTokenizerDir(t, src, "vocab.json", "merges.txt")
		require.NoError(t, os.WriteFile(filepath.Join(dir, "tokenizer_config.json"), []byte(`{"model_max_length": 1}`), 0o644))
		_, err := LoadTokenizer(dir)
		require.ErrorContains(t, err, "model_max_length")
	})
}

func BenchmarkEncode(b *testing.B) {
	tok, err := LoadTokenizer(tokenizerFixtureDir(b))
	require.NoError(b, err)
	cases := loadTokenizerCases(b, tokenizerFixtureDir(b))
	texts := make([]string, len(cases.Cases))
	for i, c := range cases.Cases {
		texts[i] = c.Text
	}
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		tok.Encode(texts[i%len(texts)])
	}
}

// TestTokenizerNFC composes decomposed accents as ftfy's NFC step does.
func TestTokenizerNFC(t *testing.T) {
	tok, err := LoadTokenizer(tokenizerFixtureDir(t))
	require.NoError(t, err)
	composed, _ := tok.Encode("caf\u00e9 cr\u00e8me")
	decomposed, _ := tok.Encode("cafe\u0301 cre\u0300me")
	require.Equal(t, composed, decomposed)
}
