package iqatest

import (
	"github.com/dp2osr/dp2o/torch"
	"testing"

	"github.com/dp2osr/dp2o/torch/nn"
	"github.com/dp2osr/dp2o/torch/pickle"
)

// WritePth writes src as a torch.save checkpoint at path (the published
// layout of a pyiqa checkpoint), in sorted key order: every key renamed by
// rename (nil: unchanged), the state dict nested under topKey ("" for a
// bare state dict, "params" for pyiqa's {'params': state_dict}).
func WritePth(tb testing.TB, path, topKey string, src nn.MapSource, rename func(string) string) {
	tb.Helper()
	var ts []pickle.Tensor
	for _, k := range src.Names() {
		t := src[k].Contiguous()
		name := k
		if rename != nil {
			name = rename(k)
		}
		ts = append(ts, pickle.Tensor{Name: name, DType: t.DType().SafetensorsCode(), Shape: t.Shape(), Data: t.Bytes()})
		if t != src[k] {
			t.Close()
		}
	}
	if err := pickle.Save(path, topKey, ts); err != nil {
		tb.Fatal(err)
	}
}

// WriteTensorPth writes one bare tensor as torch.save(tensor, path) (the
// layout of published learned-prompt files).
func WriteTensorPth(tb testing.TB, path string, t *torch.Tensor) {
	tb.Helper()
	c := t.Contiguous()
	defer c.Close()
	if err := pickle.SaveTensor(path, pickle.Tensor{DType: c.DType().SafetensorsCode(), Shape: c.Shape(), Data: c.Bytes()}); err != nil {
		tb.Fatal(err)
	}
}
