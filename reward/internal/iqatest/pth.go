package iqatest

import (
	"sort"
	"testing"

	"github.com/dp2osr/dp2o/torch"
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

// WritePthSections writes a checkpoint holding several state dicts, one
// under each key of sections ({'finetuned_clip': {...}, 'natural': {...}}),
// in sorted key order.
func WritePthSections(tb testing.TB, path string, sections map[string]nn.MapSource) {
	tb.Helper()
	var secs []pickle.Section
	keys := make([]string, 0, len(sections))
	for k := range sections {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		var ts []pickle.Tensor
		for _, n := range sections[k].Names() {
			c := sections[k][n].Contiguous()
			ts = append(ts, pickle.Tensor{Name: n, DType: c.DType().SafetensorsCode(), Shape: c.Shape(), Data: c.Bytes()})
			c.Close()
		}
		secs = append(secs, pickle.Section{Key: k, Tensors: ts})
	}
	if err := pickle.SaveSections(path, secs); err != nil {
		tb.Fatal(err)
	}
}
