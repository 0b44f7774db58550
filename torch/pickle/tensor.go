package pickle

import (
	"fmt"
	"slices"
)

// LoadTensor reads a torch.save checkpoint that holds one bare tensor
// (torch.save(tensor, path), as learned prompt contexts are published),
// through the same allowlisted unpickler as Load. The tensor's Name is
// empty.
func LoadTensor(path string) (Tensor, error) {
	var out Tensor
	err := withArchive(path, func(pkl []byte, a *archive) error {
		obj, err := unpickle(pkl)
		if err != nil {
			return fmt.Errorf("data.pkl: %w", err)
		}
		t, ok := obj.(*tensorRef)
		if !ok {
			return fmt.Errorf("checkpoint holds a %s, not a tensor", typeName(obj))
		}
		data, _, err := t.materialize(a, true)
		if err != nil {
			return err
		}
		out = Tensor{DType: t.storage.dtype, Shape: slices.Clone(t.shape), Data: data}
		return nil
	})
	if err != nil {
		return Tensor{}, &Error{Path: path, Err: err}
	}
	return out, nil
}
