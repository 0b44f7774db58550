package t5

import (
	"math"

	"github.com/dp2osr/dp2o/torch"
)

// RelativePositionBucket is transformers' T5Attention._relative_position_bucket:
// it maps relative positions (int64, key − query) to bucket ids (int64, same
// shape). Half of the buckets hold exact distances below numBuckets/4 (per
// direction when bidirectional), the rest are logarithmically spaced up to
// maxDistance; the logarithm is computed in float32 on relPos's device with
// the same ops as PyTorch, so the buckets are the reference's exactly.
func RelativePositionBucket(relPos *torch.Tensor, bidirectional bool, numBuckets, maxDistance int64) *torch.Tensor {
	s := torch.NewScope()
	defer s.Close()
	// Integer arithmetic is done on exactly representable float32 values
	// (a Go scalar is a double, which would promote int64 tensors anyway);
	// the float32 logarithm and its truncation are PyTorch's.
	var offset *torch.Tensor
	if bidirectional {
		numBuckets /= 2
		offset = relPos.GtScalar(0).To(torch.Float32).MulScalar(float64(numBuckets))
		relPos = relPos.Abs()
	} else {
		offset = relPos.ZerosLike().To(torch.Float32)
		relPos = relPos.Minimum(relPos.ZerosLike()).Neg()
	}
	maxExact := numBuckets / 2
	isSmall := relPos.LtScalar(float64(maxExact))
	large := relPos.To(torch.Float32).DivScalar(float64(maxExact)).Log().
		DivScalar(math.Log(float64(maxDistance) / float64(maxExact))).
		MulScalar(float64(numBuckets - maxExact)).
		To(torch.Int64).To(torch.Float32).
		AddScalar(float64(maxExact)).ClampMax(float64(numBuckets - 1))
	b := offset.Add(torch.Where(isSmall, relPos.To(torch.Float32), large))
	return s.Keep(b.To(torch.Int64))
}

// relativePositions is key − query position for every (query, key) pair of
// a length-n sequence: int64 (n, n) on dev.
func relativePositions(n int64, dev torch.Device) *torch.Tensor {
	s := torch.NewScope()
	defer s.Close()
	pos := torch.Arange(0, float64(n), 1, torch.Int64, dev)
	return s.Keep(pos.Unsqueeze(0).Sub(pos.Unsqueeze(1)))
}
