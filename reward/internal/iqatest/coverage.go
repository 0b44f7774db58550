package iqatest

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/dp2osr/dp2o/internal/testutil"
	"github.com/dp2osr/dp2o/torch"
)

// RequireProduced fails unless every stored tensor whose name starts with
// prefix (stats tensors aside) was produced, as checked[name] records.
func (e *Expected) RequireProduced(tb testing.TB, prefix string, checked map[string]bool) {
	tb.Helper()
	for name := range e.Meta {
		if strings.HasPrefix(name, prefix) && !strings.HasSuffix(name, ".stats") && !checked[name] {
			tb.Fatalf("%s: stored but not produced", name)
		}
	}
}

// CheckSameShapeBatches scores the cases whose images share a shape as one
// batch through score and checks each row against its case's stored score:
// a batch must give what the images give one by one.
func (f *Folder) CheckSameShapeBatches(t *testing.T, exp *Expected, images map[string]*torch.Tensor,
	score func(ctx context.Context, img *torch.Tensor) ([]float64, error)) {
	t.Helper()
	groups := map[string][]Case{}
	for _, c := range f.Cases {
		groups[fmt.Sprint(c.Shape)] = append(groups[fmt.Sprint(c.Shape)], c)
	}
	for _, cs := range groups {
		if len(cs) < 2 {
			continue
		}
		testutil.NoLeak(t)
		var imgs []*torch.Tensor
		for _, c := range cs {
			imgs = append(imgs, images[c.Image])
		}
		img := torch.Unscope(torch.Scoped(func() *torch.Tensor { return torch.Cat(imgs, 0).ToDevice(testutil.Device(t)) }))
		got, err := score(context.Background(), img)
		img.Close()
		if err != nil {
			t.Fatal(err)
		}
		for i, c := range cs {
			exp.CheckScores(t, c.Score, got[i:i+1])
		}
	}
}

// CheckNRInputErrors checks the input rules every no-reference scorer
// shares (reward.CheckInputs): grayscale, RGBA and 3-d tensors and values
// outside [0,1] are errors naming the metric, and a cancelled context is
// context.Canceled.
func CheckNRInputErrors(t *testing.T, s interface {
	Name() string
	Score(ctx context.Context, img, ref *torch.Tensor) ([]float64, error)
}) {
	t.Helper()
	dev := testutil.Device(t)
	sc := torch.NewScope()
	defer sc.Close()
	mk := func(shape ...int64) *torch.Tensor { return torch.Full(shape, 0.5, torch.Float32, dev) }
	ctx := context.Background()
	for _, tc := range []struct {
		name string
		img  *torch.Tensor
		msg  string
	}{
		{"gray", mk(1, 1, 64, 64), "want (N,3,H,W)"},
		{"rgba", mk(1, 4, 64, 64), "want (N,3,H,W)"},
		{"3-d", mk(3, 64, 64), "want (N,3,H,W)"},
		{"range", mk(1, 3, 64, 64).Neg(), "[0,1]"},
	} {
		_, err := s.Score(ctx, tc.img, nil)
		if err == nil || !strings.Contains(err.Error(), tc.msg) || !strings.Contains(err.Error(), s.Name()) {
			t.Fatalf("%s: err = %v, want one naming %q and %q", tc.name, err, s.Name(), tc.msg)
		}
	}
	cancelled, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := s.Score(cancelled, mk(1, 3, 64, 64), nil); !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled context: err = %v", err)
	}
}
