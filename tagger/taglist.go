package tagger

import (
	_ "embed"
	"fmt"
	"math"
	"os"
	"strconv"
	"strings"
)

//go:embed data/ram_tag_list.txt
var embeddedTagList string

//go:embed data/ram_tag_list_threshold.txt
var embeddedThresholds string

// Defaults of RAMLora's constructor that shape the thresholds.
const (
	// DefaultThreshold is the class threshold of tags the threshold file
	// does not cover (threshold=0.68).
	DefaultThreshold = 0.68
	// MaxThreshold caps the file's values unless they exceed it
	// (max_threthold=0.9).
	MaxThreshold = 0.9
	// AddThreshold is added to the file's values (add_threthold=0).
	AddThreshold = 0.0
)

// SplitLines is Python's str.splitlines(): lines split at \n, \r\n, \r,
// \v, \f, \x1c, \x1d, \x1e, \x85, U+2028 and U+2029, without a trailing
// empty line. This is how RAM reads its tag list.
func SplitLines(s string) []string {
	var out []string
	start := 0
	for i, r := range s {
		if i < start {
			continue
		}
		switch r {
		case '\n', '\v', '\f', '\x1c', '\x1d', '\x1e', '\u0085', '\u2028', '\u2029':
			out = append(out, s[start:i])
			start = i + len(string(r))
		case '\r':
			out = append(out, s[start:i])
			start = i + 1
			if start < len(s) && s[start] == '\n' {
				start++
			}
		}
	}
	if start < len(s) {
		out = append(out, s[start:])
	}
	return out
}

// ParseTagList splits a tag list file's text as RAM's load_tag_list does.
func ParseTagList(text string) []string { return SplitLines(text) }

// ReadTagList reads a tag list file; "" is the embedded ram_tag_list.txt.
func ReadTagList(path string) ([]string, error) {
	if path == "" {
		return ParseTagList(embeddedTagList), nil
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("tag list: %w", err)
	}
	tags := ParseTagList(string(b))
	if len(tags) == 0 {
		return nil, fmt.Errorf("tag list %s: no tags", path)
	}
	return tags, nil
}

// ParseThresholds computes the class thresholds of n tags from a threshold
// file's text as RAMLora's constructor does: every class starts at
// DefaultThreshold; line k (float(line.strip())) sets class k to its value
// when above MaxThreshold, else to min(value + AddThreshold, MaxThreshold);
// the result is float32. More lines than tags, or a line that is not a
// number, is an error (Python raises too).
func ParseThresholds(text string, n int) ([]float32, error) {
	thr := make([]float32, n)
	for i := range thr {
		thr[i] = float32(DefaultThreshold)
	}
	lines := strings.SplitAfter(text, "\n")
	if len(lines) > 0 && lines[len(lines)-1] == "" {
		lines = lines[:len(lines)-1]
	}
	for k, line := range lines {
		if k >= n {
			return nil, fmt.Errorf("thresholds: %d lines for %d tags", len(lines), n)
		}
		v, err := strconv.ParseFloat(strings.TrimSpace(line), 64)
		if err != nil || math.IsNaN(v) {
			return nil, fmt.Errorf("thresholds: line %d: %q is not a number", k+1, strings.TrimSpace(line))
		}
		if v > MaxThreshold {
			thr[k] = float32(v)
		} else {
			thr[k] = float32(math.Min(v+AddThreshold, MaxThreshold))
		}
	}
	return thr, nil
}

// ReadThresholds reads a threshold file for n tags; "" is the embedded
// ram_tag_list_threshold.txt.
func ReadThresholds(path string, n int) ([]float32, error) {
	text := embeddedThresholds
	if path != "" {
		b, err := os.ReadFile(path)
		if err != nil {
			return nil, fmt.Errorf("thresholds: %w", err)
		}
		text = string(b)
	}
	thr, err := ParseThresholds(text, n)
	if err != nil && path != "" {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return thr, err
}

// JoinTags is the prompt: the tags joined with ", " (DP²O-SR's
// generate_tag; the upstream RAM joins with " | ").
func JoinTags(tags []string) string { return strings.Join(tags, ", ") }
