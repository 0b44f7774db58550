package alexnet

import (
	"testing"

	"github.com/dp2osr/dp2o/internal/testutil"
	"github.com/dp2osr/dp2o/torch"
	"github.com/dp2osr/dp2o/torch/nn"
)

// TestForwardShapes builds the features on the CPU (zero weights) and checks the
// keys (torchvision's) and the tapped shapes of a 224×224 input
// (55, 27, 13, 13, 13 after the ReLUs; 6 after the last pool).
func TestForwardShapes(t *testing.T) {
	testutil.NoLeak(t)
	b := nn.NewBuilder(nil, torch.Float32, torch.CPU)
	f := New(b.Sub("features"))
	defer b.Params().Close()
	req := b.Requested()
	if len(req) != 10 {
		t.Fatalf("%d keys requested, want 10", len(req))
	}
	for _, k := range []string{"features.0.weight", "features.3.bias", "features.10.weight"} {
		if _, ok := req[k]; !ok {
			t.Errorf("%s not requested", k)
		}
	}
	s := torch.NewScope()
	defer s.Close()
	x := torch.Zeros([]int64{1, 3, 224, 224}, torch.Float32, torch.CPU)
	outs := f.Forward(x, append(ReLUTaps, Pool5)...)
	want := []int64{55, 27, 13, 13, 13, 6}
	ch := []int64{64, 192, 384, 256, 256, 256}
	for i, o := range outs {
		if sh := o.Shape(); sh[1] != ch[i] || sh[2] != want[i] || sh[3] != want[i] {
			t.Errorf("tap %d: shape %v", i, sh)
		}
	}
	if err := torch.Try(func() { f.Forward(x, -1) }); err == nil {
		t.Error("tap -1: no error")
	}
}
