package dist

import "fmt"

// Range is rank's contiguous share [lo, hi) of n items split over world
// ranks: shares differ by at most one item, the first n%world ranks taking
// the larger ones, and together they cover [0, n) in order. Use it for work
// without collectives per item (sampling, labelling candidates), where
// uneven shares are fine.
func Range(n, rank, world int) (lo, hi int) {
	if world < 1 || rank < 0 || rank >= world || n <= 0 {
		return 0, 0
	}
	q, r := n/world, n%world
	lo = rank*q + min(rank, r)
	hi = lo + q
	if rank < r {
		hi++
	}
	return lo, hi
}

// Part is g's rank's share of items (see Range).
func Part[T any](g *Group, items []T) []T {
	lo, hi := Range(len(items), g.Rank(), g.WorldSize())
	return items[lo:hi]
}

// Batch is g's rank's share of one step's global batch. The batch must
// split evenly (len(batch) a multiple of the world size): every rank then
// runs the same number of steps, and the mean of the ranks' per-sample mean
// losses equals the global batch's, which is what makes N processes with
// batch b train like one process with batch N·b.
func Batch[T any](g *Group, batch []T) ([]T, error) {
	if w := g.WorldSize(); len(batch)%w != 0 {
		return nil, fmt.Errorf("dist: a batch of %d does not split over %d ranks", len(batch), w)
	}
	return Part(g, batch), nil
}
