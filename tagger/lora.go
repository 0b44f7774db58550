package tagger

import (
	"fmt"

	"github.com/dp2osr/dp2o/torch"
)

// LoRA settings of DAPE (loralib, as RAM's modules create them): rank 8,
// lora_alpha 1, so the update is scaled by alpha/r = 1/8.
const (
	LoRARank  = 8
	LoRAAlpha = 1.0
)

// LoRAScale is loralib's scaling, lora_alpha / r.
const LoRAScale = LoRAAlpha / LoRARank

// MergeLoRA merges a lora.Linear pair into its weight in place, as
// loralib does at eval(): W += (B @ A) · scale. W is (out, in), A (r, in),
// B (out, r).
func MergeLoRA(w, a, b *torch.Tensor, scale float64) (err error) {
	defer torch.Recover(&err)
	if a.Dim() != 2 || b.Dim() != 2 || w.Dim() != 2 || a.Size(0) != b.Size(1) || a.Size(1) != w.Size(1) || b.Size(0) != w.Size(0) {
		return fmt.Errorf("lora: A %v and B %v do not fit W %v", a.Shape(), b.Shape(), w.Shape())
	}
	torch.NoGrad(func() {
		d := torch.Scoped(func() *torch.Tensor { return b.To(w.DType()).Mm(a.To(w.DType())).MulScalar(scale) })
		w.Add_(d, 1)
		d.Close()
	})
	return nil
}

// MergeLoRAGroups merges a loralib MergedLinear pair in place: the weight's
// rows form len(enable) equal groups (q, k, v for a qkv projection); the
// enabled groups, in order, take consecutive r-row blocks of A (r·n, in) and
// out/len(enable)-row blocks of B (n·out/len(enable), r), and each gets
// W[group] += (B_g @ A_g) · scale. RAM's Swin qkv enables q and v.
func MergeLoRAGroups(w, a, b *torch.Tensor, enable []bool, scale float64) (err error) {
	defer torch.Recover(&err)
	var n int64
	for _, e := range enable {
		if e {
			n++
		}
	}
	if w.Dim() != 2 || a.Dim() != 2 || b.Dim() != 2 || n == 0 || len(enable) == 0 || w.Size(0)%int64(len(enable)) != 0 {
		return fmt.Errorf("lora: weight %v does not split into %d groups", w.Shape(), len(enable))
	}
	rows := w.Size(0) / int64(len(enable))
	r := a.Size(0) / n
	if a.Size(0) != r*n || a.Size(1) != w.Size(1) || b.Size(0) != rows*n || b.Size(1) != r {
		return fmt.Errorf("lora: A %v and B %v do not fit W %v with %d of %d groups enabled", a.Shape(), b.Shape(), w.Shape(), n, len(enable))
	}
	torch.NoGrad(func() {
		var g int64
		for i, e := range enable {
			if !e {
				continue
			}
			d := torch.Scoped(func() *torch.Tensor {
				bg := b.Narrow(0, g*rows, rows).To(w.DType())
				ag := a.Narrow(0, g*r, r).To(w.DType())
				return bg.Mm(ag).MulScalar(scale)
			})
			wg := w.Narrow(0, int64(i)*rows, rows)
			wg.Add_(d, 1)
			wg.Close()
			d.Close()
			g++
		}
	})
	return nil
}
