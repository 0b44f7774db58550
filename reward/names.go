package reward

import (
	"errors"
	"strings"
)

// ExpandNames reads a comma-separated metric list (the --metrics flags of
// the example programs): pyiqa names, or the
// groups fr (DefaultFR), nr (DefaultNR), reward (both) and
// all (every registered metric); repeats are dropped.
func ExpandNames(s string) ([]string, error) {
	var out []string
	seen := map[string]bool{}
	add := func(ns ...string) {
		for _, n := range ns {
			if !seen[n] {
				seen[n] = true
				out = append(out, n)
			}
		}
	}
	for _, n := range strings.Split(s, ",") {
		switch n = strings.TrimSpace(n); n {
		case "":
		case "fr":
			add(DefaultFR...)
		case "nr":
			add(DefaultNR...)
		case "reward":
			add(DefaultFR...)
			add(DefaultNR...)
		case "all":
			add(Names()...)
		default:
			add(n)
		}
	}
	if len(out) == 0 {
		return nil, errors.New("reward: empty metric list")
	}
	return out, nil
}
