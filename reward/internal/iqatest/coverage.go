package iqatest

import (
	"context"
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
