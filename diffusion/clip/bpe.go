package clip

import (
	"strings"
	"sync"
)

// endOfWord is the suffix CLIP's BPE appends to the last symbol of every
// pre-token.
const endOfWord = "</w>"

// bpeCacheLimit bounds the number of entries kept in the BPE cache. When the
// cache is full it is reset (keeping only the seeded special tokens), so a
// long-running process encoding arbitrary text cannot grow it without bound.
// transformers' cache is unbounded; the bound changes memory use, never results.
const bpeCacheLimit = 1 << 16

// byteEncoder maps every byte to the printable unicode character that
// represents it in the byte-level vocabulary (GPT-2's bytes_to_unicode).
var byteEncoder = buildByteEncoder()

// buildByteEncoder reproduces bytes_to_unicode(): the printable Latin-1 bytes
// ('!'..'~', '¡'..'¬', '®'..'ÿ') map to themselves; the remaining bytes, in
// increasing order, map to U+0100, U+0101, ...
func buildByteEncoder() [256]string {
	var printable [256]bool
	for b := '!'; b <= '~'; b++ {
		printable[b] = true
	}
	for b := '¡'; b <= '¬'; b++ {
		printable[b] = true
	}
	for b := '®'; b <= 'ÿ'; b++ {
		printable[b] = true
	}
	var enc [256]string
	n := 0
	for b := 0; b < 256; b++ {
		if printable[b] {
			enc[b] = string(rune(b))
		} else {
			enc[b] = string(rune(256 + n))
			n++
		}
	}
	return enc
}

// mergePair is an adjacent symbol pair of a BPE merge rule.
type mergePair struct {
	left, right string
}

// bpe is CLIP's byte-level BPE model: merge ranks plus a concurrency-safe
// cache from byte-encoded pre-token to its BPE symbols.
type bpe struct {
	ranks map[mergePair]int
	seed  map[string][]string

	mu    sync.Mutex
	cache map[string][]string
}

// newBPE returns a BPE model with the given merge ranks. Like transformers'
// CLIPTokenizer, the cache is seeded so that the special-token pre-tokens
// (the CLIP regex can produce "<|startoftext|>" from text such as
// "<|StartOfText|>") map to the special tokens themselves.
func newBPE(ranks map[mergePair]int, bos, eos string) *bpe {
	seed := map[string][]string{
		bos: {bos},
		eos: {eos},
	}
	b := &bpe{ranks: ranks, seed: seed}
	b.resetCacheLocked()
	return b
}

func (b *bpe) resetCacheLocked() {
	b.cache = make(map[string][]string, len(b.seed))
	for k, v := range b.seed {
		b.cache[k] = v
	}
}

// encode returns the BPE symbols of one byte-encoded pre-token (as produced
// by byteEncode and concatenated). The returned slice must not be modified.
func (b *bpe) encode(token string) []string {
	b.mu.Lock()
	if v, ok := b.cache[token]; ok {
		b.mu.Unlock()
		return v
	}
	b.mu.Unlock()

	out := b.merge(token)

	b.mu.Lock()
	if len(b.cache) >= bpeCacheLimit {
		b.resetCacheLocked()
	}
	b.cache[token] = out
	b.mu.Unlock()
	return out
}

// merge runs the BPE merge loop of transformers' CLIPTokenizer.bpe: split
// into characters, append "</w>" to the last one, then repeatedly merge every
// non-overlapping occurrence (left to right) of the adjacent pair with the
// lowest rank until no adjacent pair has a rank or one symbol is left.
func (b *bpe) merge(token string) []string {
	var word []string
	for _, r := range token {
		word = append(word, string(r))
	}
	if len(word) == 0 {
		return nil
	}
	word[len(word)-1] += endOfWord
	if len(word) == 1 {
		return word
	}
	next := make([]string, 0, len(word))
	for len(word) > 1 {
		best, bestRank := mergePair{}, -1
		for i := 0; i+1 < len(word); i++ {
			p := mergePair{word[i], word[i+1]}
			if r, ok := b.ranks[p]; ok && (bestRank < 0 || r < bestRank) {
				best, bestRank = p, r
			}
		}
		if bestRank < 0 {
			break
		}
		next = next[:0]
		for i := 0; i < len(word); {
			if i+1 < len(word) && word[i] == best.left && word[i+1] == best.right {
				next = append(next, best.left+best.right)
				i += 2
			} else {
				next = append(next, word[i])
				i++
			}
		}
		word, next = next, word
	}
	return append([]string(nil), word...)
}

// parseMerges parses the lines of merges.txt the way transformers'
// CLIPTokenizer does: the first line (the "#version" header) is skipped
// unconditionally, at most maxMerges lines follow, and a later duplicate of a
// pair overrides the rank of an earlier one. A line that is not exactly two
// whitespace-separated symbols is an error (transformers would silently keep
// an unusable rule). lineErr receives the 1-based line number.
func parseMerges(data string, maxMerges int, lineErr func(line int, text string) error) (map[mergePair]int, error) {
	data = strings.TrimSpace(data)
	lines := strings.Split(data, "\n")
	if len(lines) > 0 {
		lines = lines[1:]
	}
	if len(lines) > maxMerges {
		lines = lines[:maxMerges]
	}
	ranks := make(map[mergePair]int, len(lines))
	for i, line := range lines {
		f := strings.Fields(line)
		if len(f) != 2 {
			return nil, lineErr(i+2, line)
		}
		ranks[mergePair{f[0], f[1]}] = i
	}
	return ranks, nil
}
