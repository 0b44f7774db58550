package preference

import (
	"crypto/sha256"
	"encoding/hex"
	"sort"
	"strings"

	"github.com/dp2osr/dp2o/torch"
	"github.com/dp2osr/dp2o/torch/optim"
)

// Fingerprint identifies a set of weights bit for bit: SHA256 over the raw
// little-endian float32 bytes of every tensor, keys in byte-wise sorted
// order; SumSq is Σx² accumulated in float64; Numel the element count.
// Training uses it to prove that frozen weights did not change.
type Fingerprint struct {
	SHA256 string  `json:"sha256"`
	SumSq  float64 `json:"sumsq_f64"`
	Numel  int64   `json:"numel"`
}

// FingerprintOf computes the fingerprint of params (any dtype and device:
// each tensor is read as float32 on the CPU).
func FingerprintOf(params []optim.Param) (fp Fingerprint, err error) {
	defer torch.Recover(&err)
	ps := append([]optim.Param(nil), params...)
	sort.Slice(ps, func(i, j int) bool { return strings.Compare(ps[i].Name, ps[j].Name) < 0 })
	h := sha256.New()
	for _, p := range ps {
		c := torch.Scoped(func() *torch.Tensor {
			return p.Tensor.Detach().ToDevice(torch.CPU).To(torch.Float32).Contiguous()
		})
		h.Write(c.Bytes())
		for _, v := range c.Float32s() {
			fp.SumSq += float64(v) * float64(v)
		}
		fp.Numel += c.Numel()
		c.Close()
	}
	fp.SHA256 = hex.EncodeToString(h.Sum(nil))
	return fp, nil
}
