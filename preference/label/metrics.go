package label

import (
	"errors"
	"strings"

	"github.com/dp2osr/dp2o/reward"
)

// ExpandMetrics reads a comma-separated metric list: pyiqa names, or the
// groups fr (reward.DefaultFR), nr (reward.DefaultNR), reward (both) and
// all (every registered metric); repeats are dropped.
func ExpandMetrics(s string) ([]string, error) {
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
			add(reward.DefaultFR...)
		case "nr":
			add(reward.DefaultNR...)
		case "reward":
			add(reward.DefaultFR...)
			add(reward.DefaultNR...)
		case "all":
			add(reward.Names()...)
		default:
			add(n)
		}
	}
	if len(out) == 0 {
		return nil, errors.New("label: empty metric list")
	}
	return out, nil
}

// ScoredMetrics lists the metrics of a folder's score log, in the order
// they first appear.
func ScoredMetrics(dir string) ([]string, error) {
	return scoredOrder(dir)
}
