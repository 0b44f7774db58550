package t5

import (
	"encoding/binary"
	"errors"
	"fmt"
	"strings"
	"unicode/utf8"

	"github.com/rivo/uniseg"
)

// charsmap is SentencePiece's precompiled normalisation map (the
// "precompiled_charsmap" of a NormalizerSpec, e.g. nmt_nfkc): a darts-clone
// double-array trie over UTF-8 byte strings whose values are offsets of
// NUL-terminated replacement strings.
type charsmap struct {
	units []uint32
	repl  []byte
}

// parseCharsmap reads the blob: uint32 LE trie size in bytes, the trie's
// uint32 LE units, then the replacement strings.
func parseCharsmap(b []byte) (*charsmap, error) {
	if len(b) < 4 {
		return nil, errors.New("precompiled charsmap: shorter than its 4-byte header")
	}
	size := binary.LittleEndian.Uint32(b)
	if size%4 != 0 || uint64(size) > uint64(len(b)-4) {
		return nil, fmt.Errorf("precompiled charsmap: trie size %d does not fit the %d bytes that follow", size, len(b)-4)
	}
	if size == 0 {
		return nil, errors.New("precompiled charsmap: empty trie")
	}
	m := &charsmap{units: make([]uint32, size/4), repl: b[4+size:]}
	if !utf8.Valid(m.repl) {
		return nil, errors.New("precompiled charsmap: the replacement strings are not valid UTF-8")
	}
	for i := range m.units {
		m.units[i] = binary.LittleEndian.Uint32(b[4+4*i:])
	}
	return m, nil
}

func dartsHasLeaf(u uint32) bool { return (u>>8)&1 == 1 }
func dartsValue(u uint32) uint32 { return u & 0x7fffffff }
func dartsLabel(u uint32) uint32 { return u & 0x800000ff }
func dartsOffset(u uint32) uint32 {
	return (u >> 10) << ((u & 0x200) >> 6)
}

// transform returns the replacement of the shortest prefix of key that the
// map holds (spm_precompiled's transform: the first result of a
// common-prefix search), and false when no prefix matches.
func (m *charsmap) transform(key string) (string, bool) {
	a := m.units
	pos := dartsOffset(a[0])
	for i := 0; i < len(key); i++ {
		c := key[i]
		if c == 0 {
			break
		}
		pos ^= uint32(c)
		if int(pos) >= len(a) {
			return "", false
		}
		u := a[pos]
		if dartsLabel(u) != uint32(c) {
			return "", false
		}
		pos ^= dartsOffset(u)
		if int(pos) >= len(a) {
			return "", false
		}
		if dartsHasLeaf(u) {
			off := int(dartsValue(a[pos]))
			if off > len(m.repl) {
				return "", false
			}
			end := off
			for end < len(m.repl) && m.repl[end] != 0 {
				end++
			}
			return string(m.repl[off:end]), true
		}
	}
	return "", false
}

// normalize is the Hugging Face Precompiled normalizer: the text is walked
// by extended grapheme clusters; a cluster shorter than 6 bytes that has a
// replacement (of its shortest matching prefix) is replaced whole, otherwise
// each character is replaced by its own replacement or kept.
func (m *charsmap) normalize(s string) string {
	var sb strings.Builder
	sb.Grow(len(s))
	state := -1
	for len(s) > 0 {
		var g string
		g, s, _, state = uniseg.FirstGraphemeClusterInString(s, state)
		if len(g) < 6 {
			if r, ok := m.transform(g); ok {
				sb.WriteString(r)
				continue
			}
		}
		for len(g) > 0 {
			_, n := utf8.DecodeRuneInString(g)
			if r, ok := m.transform(g[:n]); ok {
				sb.WriteString(r)
			} else {
				sb.WriteString(g[:n])
			}
			g = g[n:]
		}
	}
	return sb.String()
}
