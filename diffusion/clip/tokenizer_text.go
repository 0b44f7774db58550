package clip

import (
	"regexp"
	"strings"
	"unicode"
	"unicode/utf8"

	"golang.org/x/text/unicode/norm"
)

// pretokenRE is the CLIP pre-tokenization pattern of transformers'
// CLIPTokenizer (compiled there with the `regex` module and IGNORECASE):
// special tokens, English contractions, letter runs, single digits and runs
// of other non-space symbols. Go's RE2 alternation is leftmost-first like
// Python's, and \p{L}/\p{N} are supported. Go's \s is ASCII-only, which is
// equivalent here because cleaning has already turned every Unicode
// whitespace run into a single ' '.
var pretokenRE = regexp.MustCompile(`(?i)<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+`)

// isPySpace reports whether r is whitespace for Python's str.isspace (and so
// for re's Unicode \s and str.strip()): Go's unicode.IsSpace plus the
// information separators U+001C..U+001F, which Python counts as whitespace
// (bidi class B/S) and Go does not.
func isPySpace(r rune) bool {
	return unicode.IsSpace(r) || (r >= 0x1c && r <= 0x1f)
}

// cleanText is the text front end of transformers' CLIPTokenizer with ftfy:
//
//	whitespace_clean(ftfy.fix_text(text)).lower()
//
// Of ftfy.fix_text only its default NFC normalisation is applied, so
// decomposed accents ("e" + U+0301) compose to "é" as with transformers+ftfy.
// ftfy's other repairs (mojibake, curly quotes, ligatures) are not: ftfy is
// not a Go library, and the reference fixtures were generated without ftfy
// from inputs it leaves unchanged. HTML entities are not unescaped, which
// matches transformers (openai/CLIP's simple_tokenizer does unescape them).
//
// Invalid UTF-8 bytes become U+FFFD, as a Python str decoded with
// errors="replace" would hold them.
func cleanText(s string) string {
	// ftfy.fix_text's default normalisation is NFC; its other fixes
	// (mojibake, HTML entities) are not reproduced (see the package doc).
	s = norm.NFC.String(s)
	// whitespace_clean: re.sub(r"\s+", " ", text).strip()
	var b strings.Builder
	b.Grow(len(s))
	pendingSpace := false
	for _, r := range s {
		if isPySpace(r) {
			pendingSpace = true
			continue
		}
		if pendingSpace && b.Len() > 0 {
			b.WriteByte(' ')
		}
		pendingSpace = false
		b.WriteRune(r) // invalid bytes arrive as utf8.RuneError = U+FFFD
	}
	return pyLower(b.String())
}

// pyLower implements Python's str.lower: full Unicode lowercase mapping. It
// differs from strings.ToLower in the two places where Python's full mapping
// differs from Go's simple one: U+0130 'İ' lowercases to "i\u0307", and a
// capital sigma in word-final position (Unicode's Final_Sigma context)
// lowercases to 'ς' instead of 'σ'. For every other code point Python 3.11
// and Go agree (checked exhaustively).
func pyLower(s string) string {
	ascii := true
	for i := 0; i < len(s); i++ {
		if s[i] >= utf8.RuneSelf {
			ascii = false
			break
		}
	}
	if ascii {
		return strings.ToLower(s)
	}
	rs := []rune(s)
	var b strings.Builder
	b.Grow(len(s) + 8)
	for i, r := range rs {
		switch r {
		case 0x130:
			b.WriteString("i\u0307")
		case 0x3a3:
			if isFinalSigma(rs, i) {
				b.WriteRune(0x3c2)
			} else {
				b.WriteRune(0x3c3)
			}
		default:
			b.WriteRune(unicode.ToLower(r))
		}
	}
	return b.String()
}

// isFinalSigma reports whether the capital sigma at rs[i] is in the
// Final_Sigma context, as CPython's handle_capital_sigma decides it:
// preceded by a cased letter (skipping case-ignorable characters) and not
// followed by one (again skipping case-ignorable characters).
func isFinalSigma(rs []rune, i int) bool {
	j := i - 1
	for j >= 0 && isCaseIgnorable(rs[j]) {
		j--
	}
	if j < 0 || !isCased(rs[j]) {
		return false
	}
	j = i + 1
	for j < len(rs) && isCaseIgnorable(rs[j]) {
		j++
	}
	return j == len(rs) || !isCased(rs[j])
}

// isCased approximates Unicode's Cased property (Lowercase, Uppercase or
// Titlecase_Letter).
func isCased(r rune) bool {
	return unicode.IsUpper(r) || unicode.IsLower(r) || unicode.IsTitle(r) ||
		unicode.Is(unicode.Other_Lowercase, r) || unicode.Is(unicode.Other_Uppercase, r)
}

// isCaseIgnorable approximates Unicode's Case_Ignorable property: categories
// Mn, Me, Cf, Lm, Sk and the Word_Break classes MidLetter, MidNumLet and
// Single_Quote.
func isCaseIgnorable(r rune) bool {
	switch r {
	case '\'', '.', ':', 0xb7, 0x387, 0x55f, 0x5f4, 0x2018, 0x2019, 0x2024,
		0x2027, 0xfe13, 0xfe52, 0xfe55, 0xff07, 0xff0e, 0xff1a:
		return true
	}
	return unicode.In(r, unicode.Mn, unicode.Me, unicode.Cf, unicode.Lm, unicode.Sk)
}
