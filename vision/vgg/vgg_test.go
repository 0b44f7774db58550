package vgg

import (
	"testing"

	"github.com/dp2osr/dp2o/internal/testutil"
	"github.com/dp2osr/dp2o/torch"
	"github.com/dp2osr/dp2o/torch/nn"
)

// TestLayout checks the Sequential indices against torchvision's vgg16 and
// vgg19 (features[29] is relu5_3 / features[30] the last pool for VGG16;
// VGG19 has 16 convolutions and 37 layers).
func TestLayout(t *testing.T) {
	cases := []struct {
		cfg    []int64
		name   string
		index  int
		convs  int
		layers int
	}{
		{VGG16, "relu1_2", 3, 13, 31},
		{VGG16, "relu3_3", 15, 13, 31},
		{VGG16, "relu5_3", 29, 13, 31},
		{VGG16, "pool5", 30, 13, 31},
		{VGG19, "relu5_4", 35, 16, 37},
		{VGG11, "conv1_1", 0, 8, 21},
	}
	for _, c := range cases {
		i, err := Index(c.cfg, c.name)
		if err != nil || i != c.index {
			t.Errorf("Index(%s) = %d, %v; want %d", c.name, i, err, c.index)
		}
		if n := len(ConvIndices(c.cfg)); n != c.convs {
			t.Errorf("%d convolutions, want %d", n, c.convs)
		}
	}
	if _, err := Index(VGG16, "relu6_1"); err == nil {
		t.Error("relu6_1: no error")
	}
}

// TestForwardShapes builds VGG16 on the CPU (zero weights) and checks the tapped
// shapes and the requested keys.
func TestForwardShapes(t *testing.T) {
	testutil.NoLeak(t)
	b := nn.NewBuilder(nil, torch.Float32, torch.CPU)
	f := New(b.Sub("features"), VGG16)
	defer b.Params().Close()
	if f.NumLayers() != 31 {
		t.Fatalf("%d layers", f.NumLayers())
	}
	req := b.Requested()
	if sh, ok := req["features.28.weight"]; !ok || sh[0] != 512 || sh[1] != 512 {
		t.Fatalf("features.28.weight requested as %v", sh)
	}
	if len(req) != 26 {
		t.Fatalf("%d keys requested, want 26", len(req))
	}
	s := torch.NewScope()
	defer s.Close()
	x := torch.Zeros([]int64{2, 3, 64, 48}, torch.Float32, torch.CPU)
	outs := f.Forward(x, 29, 3, 30)
	want := [][]int64{{2, 512, 4, 3}, {2, 64, 64, 48}, {2, 512, 2, 1}}
	for i, o := range outs {
		if got := o.Shape(); len(got) != 4 || got[0] != want[i][0] || got[1] != want[i][1] || got[2] != want[i][2] || got[3] != want[i][3] {
			t.Errorf("tap %d: shape %v, want %v", i, got, want[i])
		}
	}
	if err := torch.Try(func() { f.Forward(x, 31) }); err == nil {
		t.Error("tap 31: no error")
	}
}
