package reward

import (
	"fmt"
	"os"
	"path/filepath"

	"github.com/dp2osr/dp2o/torch/nn"
	"github.com/dp2osr/dp2o/torch/pickle"
)

// WeightsPath is the published checkpoint a scorer reads: o.Weights itself,
// or the file named file inside it when o.Weights is a directory. It is an
// error naming file when o.Weights is empty.
func (o OpenOptions) WeightsPath(metric, file string) (string, error) {
	if o.Weights == "" {
		return "", fmt.Errorf("%s: no weights: set OpenOptions.Weights to %s or its directory", metric, file)
	}
	if st, err := os.Stat(o.Weights); err == nil && st.IsDir() {
		return filepath.Join(o.Weights, file), nil
	}
	return o.Weights, nil
}

// StateDict is the state dict a scorer builds from: o.Source when set
// (the caller must not close it), else the published .pth checkpoint
// (WeightsPath) read through the allowlisted unpickler, the state dict
// under key ("" for a bare one; a leading "module." is stripped). The
// returned release closes what StateDict opened.
func (o OpenOptions) StateDict(metric, file, key string) (src nn.Source, release func(), err error) {
	if o.Source != nil {
		return o.Source, func() {}, nil
	}
	path, err := o.WeightsPath(metric, file)
	if err != nil {
		return nil, nil, err
	}
	ms, err := nn.LoadPth(path, pickle.WithKey(key))
	if err != nil {
		return nil, nil, fmt.Errorf("%s: %w", metric, err)
	}
	return ms, func() { ms.Close() }, nil
}
