package qalign

import (
	"container/heap"
	"errors"
	"fmt"
	"os"
	"strings"
	"unicode/utf8"

	"github.com/dp2osr/dp2o/flow/t5"
)

// TokenizerFile is the SentencePiece model file of a LLaMA / mPLUG-Owl2
// checkpoint folder.
const TokenizerFile = "tokenizer.model"

// whitespace is SentencePiece's escaped space ▁ (U+2581).
const whitespace = "\u2581"

// Tokenizer is the LLaMA SentencePiece BPE tokenizer as transformers'
// LlamaTokenizer runs it (legacy mode: sp_model.encode of the whole text,
// which for texts without special-token strings is also what legacy=False
// gives): the identity normaliser with a dummy ▁ prefix and spaces
// escaped as ▁, SentencePiece's BPE merges by piece score, and byte
// fallback (<0xXX> pieces) for symbols outside the vocabulary. Strings of
// special tokens ("<s>") in the text are not split out (the Q-Align prompt
// has none). It is safe for concurrent use.
type Tokenizer struct {
	pieces   []string
	scores   []float32
	vocab    map[string]int64 // normal, user-defined and unused pieces (BPE merges)
	reserved map[string]int64 // control, unknown and byte pieces
	unused   map[int64]bool
	user     []string // user-defined pieces, longest first
	bytes    [256]int64
	unk, bos int64
	eos      int64
	byteFB   bool
	dummy    bool
	escape   bool
	collapse bool
}

// LoadTokenizer reads a SentencePiece BPE model (tokenizer.model).
func LoadTokenizer(path string) (*Tokenizer, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("qalign: tokenizer: %w", err)
	}
	t, err := ParseTokenizer(b)
	if err != nil {
		return nil, fmt.Errorf("qalign: tokenizer %s: %w", path, err)
	}
	return t, nil
}

// ParseTokenizer builds a tokenizer from the bytes of a SentencePiece
// model. Models of another type than BPE (a T5 Unigram spiece.model) and
// models with a precompiled normalisation map are refused.
func ParseTokenizer(b []byte) (*Tokenizer, error) {
	m, err := t5.ParseModelProto(b)
	if err != nil {
		return nil, err
	}
	if len(m.Pieces) == 0 {
		return nil, errors.New("not a SentencePiece model: no pieces")
	}
	if m.ModelType != t5.ModelBPE {
		return nil, fmt.Errorf("SentencePiece model type %d, want BPE (%d): not a LLaMA tokenizer", m.ModelType, t5.ModelBPE)
	}
	if len(m.PrecompiledCharsmap) > 0 {
		return nil, fmt.Errorf("SentencePiece normaliser %q with a precompiled charsmap is not supported (LLaMA uses identity)", m.NormalizerName)
	}
	if m.TreatWhitespaceAsSuffix {
		return nil, errors.New("treat_whitespace_as_suffix is not supported")
	}
	n := int64(len(m.Pieces))
	for _, id := range []int64{m.UnkID, m.BOSID} {
		if id < 0 || id >= n {
			return nil, fmt.Errorf("special id %d outside the %d pieces", id, n)
		}
	}
	t := &Tokenizer{pieces: m.Pieces, scores: m.Scores, vocab: map[string]int64{}, reserved: map[string]int64{},
		unused: map[int64]bool{}, unk: m.UnkID, bos: m.BOSID, eos: m.EOSID, byteFB: m.ByteFallback,
		dummy: m.AddDummyPrefix, escape: m.EscapeWhitespaces, collapse: m.RemoveExtraWhitespaces}
	for i := range t.bytes {
		t.bytes[i] = -1
	}
	for i, p := range m.Pieces {
		id := int64(i)
		switch m.Types[i] {
		case t5.PieceNormal, t5.PieceUserDefined, t5.PieceUnused:
			if _, dup := t.vocab[p]; dup {
				return nil, fmt.Errorf("piece %q is listed twice", p)
			}
			t.vocab[p] = id
			if m.Types[i] == t5.PieceUnused {
				t.unused[id] = true
			}
			if m.Types[i] == t5.PieceUserDefined {
				t.user = append(t.user, p)
			}
		case t5.PieceByte:
			var v int
			if _, err := fmt.Sscanf(p, "<0x%02X>", &v); err != nil || len(p) != 6 || v < 0 || v > 255 {
				return nil, fmt.Errorf("byte piece %q is not <0xXX>", p)
			}
			t.bytes[v] = id
			t.reserved[p] = id
		default:
			t.reserved[p] = id
		}
	}
	if t.byteFB {
		for v, id := range t.bytes {
			if id < 0 {
				return nil, fmt.Errorf("byte fallback without the piece <0x%02X>", v)
			}
		}
	}
	// Longest user-defined pieces first (SentencePiece's prefix matcher).
	for i := 1; i < len(t.user); i++ {
		for j := i; j > 0 && len(t.user[j]) > len(t.user[j-1]); j-- {
			t.user[j], t.user[j-1] = t.user[j-1], t.user[j]
		}
	}
	return t, nil
}

// VocabSize is the number of pieces.
func (t *Tokenizer) VocabSize() int { return len(t.pieces) }

// BOS is the id of <s>.
func (t *Tokenizer) BOS() int64 { return t.bos }

// EOS is the id of </s>.
func (t *Tokenizer) EOS() int64 { return t.eos }

// Piece returns the piece of id ("" outside the vocabulary).
func (t *Tokenizer) Piece(id int64) string {
	if id < 0 || id >= int64(len(t.pieces)) {
		return ""
	}
	return t.pieces[id]
}

// Encode tokenises text without BOS or EOS (sp_model.encode).
func (t *Tokenizer) Encode(text string) []int64 {
	return t.encode(t.normalize(text))
}

// EncodeBOS is the LlamaTokenizer call tokenizer(text).input_ids: BOS,
// then Encode(text) (add_eos_token is false).
func (t *Tokenizer) EncodeBOS(text string) []int64 {
	return append([]int64{t.bos}, t.Encode(text)...)
}

// normalize is SentencePiece's normaliser without a charsmap: malformed
// UTF-8 bytes replaced with U+FFFD, optional
// removal of leading, trailing and repeated spaces, the dummy ▁ prefix,
// and spaces escaped as ▁.
func (t *Tokenizer) normalize(s string) string {
	if !utf8.ValidString(s) {
		// SentencePiece's normaliser replaces every malformed byte with
		// U+FFFD (a Python str never holds one).
		var b strings.Builder
		for i := 0; i < len(s); {
			r, n := utf8.DecodeRuneInString(s[i:])
			if r == utf8.RuneError && n == 1 {
				b.WriteRune(utf8.RuneError)
			} else {
				b.WriteString(s[i : i+n])
			}
			i += n
		}
		s = b.String()
	}
	if t.collapse {
		s = strings.Join(strings.FieldsFunc(s, func(r rune) bool { return r == ' ' }), " ")
	}
	if s == "" {
		return ""
	}
	if t.dummy {
		s = " " + s
	}
	if t.escape {
		s = strings.ReplaceAll(s, " ", whitespace)
	}
	return s
}

// symbol is one node of the BPE linked list.
type symbol struct {
	prev, next int
	s          string
	fresh      bool // not a user-defined piece: may merge
}

// pair is a candidate merge of two adjacent symbols.
type pair struct {
	left, right int
	score       float32
	size        int
}

type agenda []pair

func (a agenda) Len() int { return len(a) }
func (a agenda) Less(i, j int) bool {
	if a[i].score != a[j].score {
		return a[i].score > a[j].score
	}
	return a[i].left < a[j].left
}
func (a agenda) Swap(i, j int) { a[i], a[j] = a[j], a[i] }
func (a *agenda) Push(x any)   { *a = append(*a, x.(pair)) }
func (a *agenda) Pop() any {
	old := *a
	p := old[len(old)-1]
	*a = old[:len(old)-1]
	return p
}

// encode is SentencePiece's bpe::Model::Encode on normalised text: the
// characters (user-defined pieces whole), then repeatedly the adjacent
// pair whose concatenation is the highest-scoring piece (leftmost on
// ties) is merged; symbols outside the vocabulary become their bytes'
// pieces (byte fallback) or unk.
func (t *Tokenizer) encode(s string) []int64 {
	if s == "" {
		return nil
	}
	var syms []symbol
	for i := 0; i < len(s); {
		n, user := 0, false
		for _, u := range t.user {
			if strings.HasPrefix(s[i:], u) {
				n, user = len(u), true
				break
			}
		}
		if n == 0 {
			_, n = utf8.DecodeRuneInString(s[i:])
		}
		syms = append(syms, symbol{prev: len(syms) - 1, next: len(syms) + 1, s: s[i : i+n], fresh: !user})
		i += n
	}
	syms[len(syms)-1].next = -1
	var ag agenda
	revMerge := map[string][2]string{}
	add := func(l, r int) {
		if l < 0 || r < 0 || !syms[l].fresh || !syms[r].fresh {
			return
		}
		p := syms[l].s + syms[r].s
		id, ok := t.vocab[p]
		if !ok {
			return
		}
		if t.unused[id] {
			revMerge[p] = [2]string{syms[l].s, syms[r].s}
		}
		heap.Push(&ag, pair{left: l, right: r, score: t.scores[id], size: len(p)})
	}
	for i := 1; i < len(syms); i++ {
		add(i-1, i)
	}
	for ag.Len() > 0 {
		p := heap.Pop(&ag).(pair)
		l, r := &syms[p.left], &syms[p.right]
		if l.s == "" || r.s == "" || len(l.s)+len(r.s) != p.size || l.next != p.right {
			continue // stale
		}
		l.s += r.s
		r.s = ""
		l.next = r.next
		if r.next >= 0 {
			syms[r.next].prev = p.left
		}
		add(l.prev, p.left)
		add(p.left, l.next)
	}
	var ids []int64
	for i := 0; i >= 0; i = syms[i].next {
		ids = t.resegment(ids, syms[i].s, revMerge)
	}
	return ids
}

// resegment appends the id of piece w: unused pieces are split back into
// the two symbols they were merged from in this call (LLaMA's model has no
// unused pieces), unknown ones become their bytes or unk.
func (t *Tokenizer) resegment(ids []int64, w string, revMerge map[string][2]string) []int64 {
	if id, ok := t.reserved[w]; ok {
		return append(ids, id)
	}
	if id, ok := t.vocab[w]; ok {
		if !t.unused[id] {
			return append(ids, id)
		}
		if lr, ok := revMerge[w]; ok {
			return t.resegment(t.resegment(ids, lr[0], revMerge), lr[1], revMerge)
		}
	}
	if t.byteFB {
		for i := 0; i < len(w); i++ {
			ids = append(ids, t.bytes[w[i]])
		}
		return ids
	}
	if n := len(ids); n > 0 && ids[n-1] == t.unk {
		return ids // SentencePiece merges runs of unknown symbols
	}
	return append(ids, t.unk)
}
