package qalign

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/encoding/protowire"

	"github.com/dp2osr/dp2o/flow/t5"
	"github.com/dp2osr/dp2o/internal/testutil"
	"github.com/dp2osr/dp2o/reward/internal/iqatest"
)

// llamaTokenizerEnv names a LLaMA tokenizer.model to test with when the
// fixture folder has none. The file (Meta's LLaMA / LLaMA-2 SentencePiece
// model, the sha256 in tokens.json) is not in the repository: it is not
// the project's to redistribute. scripts/llama-tokenizer.sh (run by
// `make setup`) downloads it to llamaTokenizerBuild.
const llamaTokenizerEnv = "DP2O_LLAMA_TOKENIZER"

// llamaTokenizerBuild is where scripts/llama-tokenizer.sh puts the file,
// relative to the module root.
const llamaTokenizerBuild = "build/llama/tokenizer.model"

// tokenizerPath is the LLaMA tokenizer.model to test with: the fixture
// folder's, $DP2O_LLAMA_TOKENIZER, or the module's build/llama copy; ""
// when there is none.
func tokenizerPath(t testing.TB, f *iqatest.Folder) string {
	if p := f.Path(TokenizerFile); fileExists(p) {
		return p
	}
	if p := os.Getenv(llamaTokenizerEnv); p != "" {
		require.True(t, fileExists(p), "%s=%s: no such file", llamaTokenizerEnv, p)
		return p
	}
	if root := testutil.ModuleRoot(); root != "" {
		if p := filepath.Join(root, llamaTokenizerBuild); fileExists(p) {
			return p
		}
	}
	return ""
}

// llamaTokenizer returns tokenizerPath, or skips the test when there is
// none.
func llamaTokenizer(t *testing.T, f *iqatest.Folder) string {
	t.Helper()
	p := tokenizerPath(t, f)
	if p == "" {
		t.Skipf("no LLaMA %s in %s, %s unset and no %s (scripts/llama-tokenizer.sh): the real-vocabulary "+
			"tokenisation is not checked (the synthetic BPE tests still run)", TokenizerFile, f.Dir, llamaTokenizerEnv, llamaTokenizerBuild)
	}
	return p
}

// TestTokensFixture tokenises tokens.json's prompt chunks, full prompt and
// level words with the real LLaMA tokenizer.model and compares ids and
// pieces.
func TestTokensFixture(t *testing.T) {
	f := iqatest.Load(t, folder)
	tj := readTokens(t, f)
	path := llamaTokenizer(t, f)
	b, err := os.ReadFile(path)
	require.NoError(t, err)
	sum := sha256.Sum256(b)
	require.Equal(t, tj.SHA256, hex.EncodeToString(sum[:]), "%s is not the tokenizer the fixture was made with", path)
	tok, err := ParseTokenizer(b)
	require.NoError(t, err)
	require.Equal(t, tj.VocabSize, tok.VocabSize())
	require.Equal(t, tj.BOS, tok.BOS())
	require.Equal(t, tj.EOS, tok.EOS())
	require.Equal(t, tj.UNK, tok.unk)
	for i, c := range tj.Chunks {
		ids := tok.EncodeBOS(c.Text)
		require.Equal(t, c.IDs, ids, "chunk %d %q", i, c.Text)
		var pieces []string
		for _, id := range ids {
			pieces = append(pieces, tok.Piece(id))
		}
		require.Equal(t, c.Pieces, pieces, "chunk %d", i)
	}
	require.Equal(t, tj.InputIDs, ImageTokenIDs(tok, tj.Prompt, tj.ImageToken, tj.ImageIndex))
	for i, w := range tj.LevelWords {
		require.Equal(t, tj.LevelTok[i], tok.EncodeBOS(w), w)
	}
	lv, err := LevelIDs(tok, tj.LevelWords)
	require.NoError(t, err)
	require.Equal(t, tj.LevelIDs, lv)
	for i, id := range lv {
		require.Equal(t, tj.LevelPcs[i], tok.Piece(id))
	}
	p, err := QualityPromptOf(tok)
	require.NoError(t, err)
	require.Equal(t, fixturePrompt(tj), p)
	require.NoError(t, p.Check(int64(tok.VocabSize())))
}

// spPiece is one piece of a synthetic SentencePiece model.
type spPiece struct {
	s     string
	score float32
	typ   int
}

// spModel serialises a SentencePiece ModelProto: the pieces, a trainer
// spec (model type, byte fallback, unk/bos/eos ids) and a normaliser spec.
func spModel(pieces []spPiece, modelType int, byteFallback, dummyPrefix bool) []byte {
	var b []byte
	for _, p := range pieces {
		var m []byte
		m = protowire.AppendTag(m, 1, protowire.BytesType)
		m = protowire.AppendString(m, p.s)
		m = protowire.AppendTag(m, 2, protowire.Fixed32Type)
		m = protowire.AppendFixed32(m, math.Float32bits(p.score))
		m = protowire.AppendTag(m, 3, protowire.VarintType)
		m = protowire.AppendVarint(m, uint64(p.typ))
		b = protowire.AppendTag(b, 1, protowire.BytesType)
		b = protowire.AppendBytes(b, m)
	}
	var ts []byte
	ts = protowire.AppendTag(ts, 3, protowire.VarintType)
	ts = protowire.AppendVarint(ts, uint64(modelType))
	if byteFallback {
		ts = protowire.AppendTag(ts, 35, protowire.VarintType)
		ts = protowire.AppendVarint(ts, 1)
	}
	b = protowire.AppendTag(b, 2, protowire.BytesType)
	b = protowire.AppendBytes(b, ts)
	var ns []byte
	ns = protowire.AppendTag(ns, 1, protowire.BytesType)
	ns = protowire.AppendString(ns, "identity")
	ns = protowire.AppendTag(ns, 3, protowire.VarintType)
	ns = protowire.AppendVarint(ns, map[bool]uint64{true: 1, false: 0}[dummyPrefix])
	ns = protowire.AppendTag(ns, 4, protowire.VarintType)
	ns = protowire.AppendVarint(ns, 0)
	b = protowire.AppendTag(b, 3, protowire.BytesType)
	b = protowire.AppendBytes(b, ns)
	return b
}

// synthPieces is a small LLaMA-like vocabulary: <unk>, <s>, </s>, the 256
// byte pieces, then scored merges.
func synthPieces(extra ...spPiece) []spPiece {
	ps := []spPiece{{"<unk>", 0, t5.PieceUnknown}, {"<s>", 0, t5.PieceControl}, {"</s>", 0, t5.PieceControl}}
	for v := 0; v < 256; v++ {
		ps = append(ps, spPiece{fmt.Sprintf("<0x%02X>", v), 0, t5.PieceByte})
	}
	return append(ps, extra...)
}

// TestTokenizerBPE checks the BPE rules on a synthetic model whose
// expected segmentations follow from SentencePiece's algorithm.
func TestTokenizerBPE(t *testing.T) {
	merges := []spPiece{
		{"▁", -1, t5.PieceNormal}, {"a", -2, t5.PieceNormal}, {"b", -3, t5.PieceNormal}, {"c", -4, t5.PieceNormal},
		{"bc", -5, t5.PieceNormal}, {"ab", -6, t5.PieceNormal}, {"▁a", -7, t5.PieceNormal},
		{"▁ab", -8, t5.PieceNormal}, {"aa", -9, t5.PieceNormal},
	}
	ps := synthPieces(merges...)
	id := map[string]int64{}
	for i, p := range ps {
		id[p.s] = int64(i)
	}
	tok, err := ParseTokenizer(spModel(ps, t5.ModelBPE, true, true))
	require.NoError(t, err)
	require.Equal(t, len(ps), tok.VocabSize())
	for _, tc := range []struct {
		text string
		want []string
	}{
		// "▁abc": bc (−5) beats ab (−6) and ▁a (−7); then ▁a (−7) merges; ▁abc is no piece.
		{"abc", []string{"▁a", "bc"}},
		// "▁ab": ab (−6) before ▁a (−7), then ▁ab.
		{"ab", []string{"▁ab"}},
		// "▁aaa": ▁a (−7) before aa (−9); the pair a|a behind it is stale, the next one merges.
		{"aaa", []string{"▁a", "aa"}},
		// Spaces become ▁, kept (no whitespace removal); é and \n are not pieces: their UTF-8 bytes.
		{"a  é\n", []string{"▁a", "▁", "▁", "<0xC3>", "<0xA9>", "<0x0A>"}},
		{"", nil},
	} {
		var want []int64
		for _, p := range tc.want {
			require.Contains(t, id, p)
			want = append(want, id[p])
		}
		require.Equal(t, want, tok.Encode(tc.text), "%q", tc.text)
	}
	require.Equal(t, append([]int64{tok.BOS()}, tok.Encode("ab")...), tok.EncodeBOS("ab"))
	// The image placeholder between chunks; BOS once.
	ids := ImageTokenIDs(tok, "ab<img>c", "<img>", ImageTokenID)
	want := append(tok.EncodeBOS("ab"), ImageTokenID)
	require.Equal(t, append(want, tok.Encode("c")...), ids)
	lv, err := LevelIDs(tok, []string{"ab", "c"})
	require.NoError(t, err)
	require.Equal(t, []int64{id["▁ab"], id["▁"]}, lv)

	// Without byte fallback an unknown symbol is <unk>, runs merged.
	tok, err = ParseTokenizer(spModel(ps, t5.ModelBPE, false, false))
	require.NoError(t, err)
	require.Equal(t, []int64{id["a"], 0, id["b"]}, tok.Encode("aéé\nb"))
	// Equal scores: the leftmost pair merges first ("aaa" → aa|a, not a|aa).
	require.Equal(t, []int64{id["aa"], id["a"]}, tok.Encode("aaa"))
}

func TestTokenizerRejects(t *testing.T) {
	ps := synthPieces(spPiece{"▁", -1, t5.PieceNormal})
	_, err := ParseTokenizer(spModel(ps, t5.ModelUnigram, true, true))
	require.ErrorContains(t, err, "want BPE")
	_, err = ParseTokenizer([]byte("{\"model\": \"not a protobuf\"}"))
	require.ErrorContains(t, err, "not a SentencePiece model")
	_, err = ParseTokenizer(nil)
	require.Error(t, err)
	// Byte fallback without the byte pieces.
	_, err = ParseTokenizer(spModel([]spPiece{{"<unk>", 0, t5.PieceUnknown}, {"<s>", 0, t5.PieceControl}, {"a", 0, t5.PieceNormal}},
		t5.ModelBPE, true, true))
	require.ErrorContains(t, err, "byte fallback")
	dir := t.TempDir()
	_, err = LoadTokenizer(filepath.Join(dir, "missing.model"))
	require.Error(t, err)
	bad := filepath.Join(dir, TokenizerFile)
	require.NoError(t, os.WriteFile(bad, spModel(ps, t5.ModelUnigram, true, true), 0o644))
	_, err = LoadTokenizer(bad)
	require.ErrorContains(t, err, bad)
}

// joinPieces concatenates the pieces of ids, byte pieces as their bytes:
// the normalised text the ids cover.
func joinPieces(t *Tokenizer, ids []int64) string {
	var b []byte
	for _, id := range ids {
		p := t.Piece(id)
		var v int
		if len(p) == 6 && strings.HasPrefix(p, "<0x") {
			if _, err := fmt.Sscanf(p, "<0x%02X>", &v); err == nil {
				b = append(b, byte(v))
				continue
			}
		}
		b = append(b, p...)
	}
	return string(b)
}

// FuzzTokenizer: with byte fallback every text is covered exactly by its
// pieces (nothing lost, nothing added), on the synthetic model and, when
// available, on the LLaMA model.
func FuzzTokenizer(f *testing.F) {
	for _, s := range []string{"", "abc", "  a\tb\n", "é😀 x", "▁a", "\xff\xfe", "USER: How would you rate?\n"} {
		f.Add(s)
	}
	toks := []*Tokenizer{}
	ps := synthPieces(spPiece{"▁", -1, t5.PieceNormal}, spPiece{"a", -2, t5.PieceNormal}, spPiece{"▁a", -3, t5.PieceNormal},
		spPiece{"aa", -3, t5.PieceNormal})
	tok, err := ParseTokenizer(spModel(ps, t5.ModelBPE, true, true))
	require.NoError(f, err)
	toks = append(toks, tok)
	if p := os.Getenv(llamaTokenizerEnv); p != "" {
		tok, err := LoadTokenizer(p)
		require.NoError(f, err)
		toks = append(toks, tok)
	}
	f.Fuzz(func(t *testing.T, s string) {
		for _, tok := range toks {
			ids := tok.Encode(s)
			for _, id := range ids {
				require.True(t, id >= 0 && id < int64(tok.VocabSize()))
			}
			require.Equal(t, tok.normalize(s), joinPieces(tok, ids), "%q", s)
		}
	})
}
