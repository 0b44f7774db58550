package label

// ScoredMetrics lists the metrics of a folder's score log, in the order
// they first appear.
func ScoredMetrics(dir string) ([]string, error) {
	return scoredOrder(dir)
}
