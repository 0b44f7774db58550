package pickle

// WithFilter makes Load materialise only the tensors whose name (after
// prefix stripping) keep accepts; the others are left out of the state dict
// and their storages are never read. Loading a few modules of a large
// training checkpoint then costs only their bytes.
func WithFilter(keep func(name string) bool) Option {
	return func(o *options) { o.keep = keep }
}
