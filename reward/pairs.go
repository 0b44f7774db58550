package reward

import (
	"fmt"
	"math"
	"sort"
)

// Rank orders the candidates of one group by reward, best first; equal
// rewards keep the lower candidate index first.
func Rank(r []float64) []int {
	idx := make([]int, len(r))
	for i := range idx {
		idx[i] = i
	}
	sort.SliceStable(idx, func(a, b int) bool { return r[idx[a]] > r[idx[b]] })
	return idx
}

// Pair is one preference pair: in group Group, candidate Winner (from the
// top N) is preferred to candidate Loser (from the bottom N).
type Pair struct {
	Group, Winner, Loser int
	// WIntra is |R_w − R_l| + (1 − μ_gap), μ_gap the mean gap of the
	// group's N² pairs; Weight is WIntra·w_inter of the group.
	WIntra, Weight float64
}

// Selection is the outcome of preference-pair construction over G groups.
type Selection struct {
	Top, Bottom [][]int // per group: the first and the last n of Rank
	Pairs       []Pair  // groups in order, winners outer, losers inner
	GapMeans    []float64
	Sigma       []float64 // population std of R over each group's candidates
	WInter      []float64 // σ_g + (1 − mean σ)
	MuSigma     float64
}

// SelectPairs builds DP²O-SR's preference pairs from the rewards of G
// groups (rewards[g][m]): each group's top n candidates are paired with its
// bottom n (all n² pairs), and each pair gets its HPO weight:
// w_intra·w_inter with w_intra = |R_w − R_l| + (1 − μ_gap(g)) and
// w_inter = σ_g + (1 − mean_g σ_g) (σ the population standard deviation of
// the group's rewards).
func SelectPairs(rewards [][]float64, n int) (*Selection, error) {
	if len(rewards) == 0 {
		return nil, fmt.Errorf("reward: no groups")
	}
	s := &Selection{}
	for g, r := range rewards {
		if n < 1 || 2*n > len(r) {
			return nil, fmt.Errorf("reward: group %d: top/bottom %d of %d candidates", g, n, len(r))
		}
		order := Rank(r)
		top, bottom := order[:n], order[len(order)-n:]
		s.Top, s.Bottom = append(s.Top, top), append(s.Bottom, bottom)
		gap := 0.0
		for _, w := range top {
			for _, l := range bottom {
				gap += math.Abs(r[w] - r[l])
			}
		}
		s.GapMeans = append(s.GapMeans, gap/float64(n*n))
		s.Sigma = append(s.Sigma, popStd(r))
	}
	for _, sg := range s.Sigma {
		s.MuSigma += sg
	}
	s.MuSigma /= float64(len(s.Sigma))
	for g, r := range rewards {
		wInter := s.Sigma[g] + (1 - s.MuSigma)
		s.WInter = append(s.WInter, wInter)
		for _, w := range s.Top[g] {
			for _, l := range s.Bottom[g] {
				wi := math.Abs(r[w]-r[l]) + (1 - s.GapMeans[g])
				s.Pairs = append(s.Pairs, Pair{Group: g, Winner: w, Loser: l, WIntra: wi, Weight: wi * wInter})
			}
		}
	}
	return s, nil
}

// popStd is the population standard deviation (divide by the count).
func popStd(v []float64) float64 {
	mean := 0.0
	for _, x := range v {
		mean += x
	}
	mean /= float64(len(v))
	ss := 0.0
	for _, x := range v {
		ss += (x - mean) * (x - mean)
	}
	return math.Sqrt(ss / float64(len(v)))
}
