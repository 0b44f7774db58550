package t5

import (
	"fmt"
	"math"
	"unicode/utf8"
)

// unkPenalty is subtracted from the smallest piece score to score an
// unknown character (tokenizers' K_UNK_PENALTY, SentencePiece's kUnkPenalty).
const unkPenalty = 10.0

// unigram is a SentencePiece Unigram model as the Hugging Face tokenizers
// library runs it (Unigram::encode_optimized, then tokenize).
type unigram struct {
	pieces       []string
	scores       []float64
	ids          map[string]int64 // piece → id (the last one for duplicates)
	unkID        int64
	byteFallback bool
	minScore     float64
	maxLen       int // longest piece in bytes
}

func newUnigram(pieces []string, scores []float64, unkID int64, byteFallback bool) (*unigram, error) {
	if len(pieces) == 0 {
		return nil, fmt.Errorf("unigram model: empty vocabulary")
	}
	if unkID < 0 || unkID >= int64(len(pieces)) {
		return nil, fmt.Errorf("unigram model: unk_id %d outside the vocabulary of %d pieces", unkID, len(pieces))
	}
	u := &unigram{pieces: pieces, scores: scores, ids: make(map[string]int64, len(pieces)),
		unkID: unkID, byteFallback: byteFallback, minScore: math.Inf(1)}
	for i, p := range pieces {
		if !utf8.ValidString(p) {
			return nil, fmt.Errorf("unigram model: piece %d is not valid UTF-8", i)
		}
		if math.IsNaN(scores[i]) {
			return nil, fmt.Errorf("unigram model: piece %d (%q) has a NaN score", i, p)
		}
		u.ids[p] = int64(i)
		u.minScore = math.Min(u.minScore, scores[i])
		u.maxLen = max(u.maxLen, len(p))
	}
	return u, nil
}

// segment is Viterbi over the pieces matching at each character position:
// the best-scoring segmentation of word (float64 sums; a node is replaced
// only by a strictly greater score, candidates tried shortest first), with
// an unknown edge of one character where no one-character piece exists.
// Consecutive unknown pieces are fused. It returns the pieces as strings.
func (u *unigram) segment(word string) []string {
	type node struct {
		start int // -1: unreached
		id    int64
		score float64
	}
	n := len(word)
	best := make([]node, n+1)
	for i := range best {
		best[i].start = -1
	}
	unkScore := u.minScore - unkPenalty
	for at := 0; at < n; {
		base := best[at].score
		_, mblen := utf8.DecodeRuneInString(word[at:])
		single := false
		for l := 1; l <= u.maxLen && at+l <= n; l++ {
			id, ok := u.ids[word[at:at+l]]
			if !ok {
				continue
			}
			t := &best[at+l]
			if cand := u.scores[id] + base; t.start < 0 || cand > t.score {
				*t = node{start: at, id: id, score: cand}
			}
			if l == mblen {
				single = true
			}
		}
		if !single {
			t := &best[at+mblen]
			if cand := unkScore + base; t.start < 0 || cand > t.score {
				*t = node{start: at, id: u.unkID, score: cand}
			}
		}
		at += mblen
	}
	var out []string
	unkEnd := -1 // end of the run of unknown pieces being fused
	for end := n; end > 0; {
		nd := best[end]
		if nd.id == u.unkID {
			if unkEnd < 0 {
				unkEnd = end
			}
		} else {
			if unkEnd >= 0 {
				out = append(out, word[end:unkEnd])
				unkEnd = -1
			}
			out = append(out, word[nd.start:end])
		}
		end = nd.start
	}
	if unkEnd >= 0 {
		out = append(out, word[:unkEnd])
	}
	for i, j := 0, len(out)-1; i < j; i, j = i+1, j-1 {
		out[i], out[j] = out[j], out[i]
	}
	return out
}

// encode appends the ids of word's pieces to out: a piece's id, or its
// bytes' <0xXX> pieces with byte fallback, or unk_id.
func (u *unigram) encode(out *encoding, word string) {
	if word == "" {
		return
	}
	for _, p := range u.segment(word) {
		if id, ok := u.ids[p]; ok {
			out.add(id, p)
			continue
		}
		if u.byteFallback {
			var bytes []int64
			for i := 0; i < len(p); i++ {
				id, ok := u.ids[fmt.Sprintf("<0x%02X>", p[i])]
				if !ok {
					bytes = nil
					break
				}
				bytes = append(bytes, id)
			}
			if bytes != nil {
				for _, id := range bytes {
					out.add(id, u.pieces[id])
				}
				continue
			}
		}
		out.add(u.unkID, p)
	}
}

// encoding collects ids and, when tokens is set, the token strings (the
// piece, or the text an unknown token covers).
type encoding struct {
	ids      []int64
	tokens   []string
	wantToks bool
}

func (e *encoding) add(id int64, tok string) {
	e.ids = append(e.ids, id)
	if e.wantToks {
		e.tokens = append(e.tokens, tok)
	}
}
