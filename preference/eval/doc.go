// Package eval holds DP²O-SR's evaluation: Best@M / Mean@M / Worst@M
// curves of the perceptual reward over the number of samples M (the
// paper's Figure 5, SPEC §8) and the metric table of a folder of outputs
// against its HR images (the paper's Table 1).
//
// # Best@M, Mean@M, Worst@M
//
// For each test image there are K samples (a candidate set of the model,
// package preference/sample, scored by preference/label) and their
// rewards. Best@M is the best reward among M samples of an image, Worst@M
// the worst and Mean@M the mean, each averaged over the test images. Two
// estimators: Subsets (default) takes the expectation over every M-subset
// of the K samples (exact, from the order statistics:
// E[max] = Σ_i r_(i)·C(i−1, M−1)/C(K, M) with r_(1) ≤ … ≤ r_(K)); Prefix
// takes the first M samples (noise pool order), as drawing M seeds would.
//
// The reward of a sample must be comparable across images and models, so
// each metric is min-max normalised over the whole pool of samples
// evaluated together (every image, every model of one plot; SPEC §8 notes
// that the paper's normalisation is unspecified), or between fixed bounds,
// and combined into FR and NR halves as the training reward is.
package eval
