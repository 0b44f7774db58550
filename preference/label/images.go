package label

import (
	"fmt"
	"path/filepath"
	"strings"

	"github.com/dp2osr/dp2o/preference/sample"
	"github.com/dp2osr/dp2o/reward"
	"github.com/dp2osr/dp2o/torch"
)

// groupImages is one input's candidates (M,3,H,W) and HR (1,3,H,W), in
// [0,1] on the scoring device.
type groupImages struct {
	id         string
	cands, ref *torch.Tensor
	sums       []string
}

// Close frees the tensors; safe on nil.
func (g *groupImages) Close() {
	if g == nil {
		return
	}
	g.cands.Close()
	if g.ref != nil {
		g.ref.Close()
	}
}

// loadGroup reads an input's candidates (checking each file against the
// manifest's SHA-256) and its HR image.
func loadGroup(dir, id string, recs []sample.Record, dev torch.Device) (g *groupImages, err error) {
	g = &groupImages{id: id}
	var parts []*torch.Tensor
	defer func() {
		for _, p := range parts {
			p.Close()
		}
	}()
	for _, r := range recs {
		path := filepath.Join(dir, r.File)
		sum, err := sample.FileSHA256(path)
		if err != nil {
			return nil, fmt.Errorf("label: input %s candidate %d: %w", id, r.Index, err)
		}
		if sum != r.SHA256 {
			return nil, fmt.Errorf("label: input %s candidate %d: %s is not the file the manifest lists (SHA-256 differs)", id, r.Index, path)
		}
		t, err := reward.LoadImage(path)
		if err != nil {
			return nil, fmt.Errorf("label: input %s candidate %d: %w", id, r.Index, err)
		}
		if len(parts) > 0 && !sameShape(parts[0], t) {
			sh0, sh := parts[0].Shape(), t.Shape()
			t.Close()
			return nil, fmt.Errorf("label: input %s: candidate %d is %d×%d, candidate 0 is %d×%d", id, r.Index, sh[3], sh[2], sh0[3], sh0[2])
		}
		parts = append(parts, t)
		g.sums = append(g.sums, sum)
	}
	if err := torch.Try(func() {
		s := torch.NewScope()
		defer s.Close()
		g.cands = s.Keep(torch.Cat(parts, 0).ToDevice(dev))
	}); err != nil {
		return nil, fmt.Errorf("label: input %s: %w", id, err)
	}
	if hr := recs[0].HR; hr != "" {
		ref, err := reward.LoadImage(hr)
		if err != nil {
			g.Close()
			return nil, fmt.Errorf("label: input %s: HR image: %w", id, err)
		}
		if !sameShape(ref, parts[0]) {
			sr, sc := ref.Shape(), parts[0].Shape()
			ref.Close()
			g.Close()
			return nil, fmt.Errorf("label: input %s: HR image %s is %d×%d but the candidates are %d×%d: full-reference metrics need the same size (sample with --upscale so that the output has the HR's size)",
				id, hr, sr[3], sr[2], sc[3], sc[2])
		}
		if err := torch.Try(func() { g.ref = torch.Scoped(func() *torch.Tensor { return ref.ToDevice(dev) }) }); err != nil {
			ref.Close()
			g.Close()
			return nil, err
		}
		ref.Close()
	}
	return g, nil
}

func sameShape(a, b *torch.Tensor) bool {
	x, y := a.Shape(), b.Shape()
	if len(x) != len(y) {
		return false
	}
	for i := range x {
		if x[i] != y[i] {
			return false
		}
	}
	return true
}

func preview(names []string) string {
	if len(names) <= 5 {
		return strings.Join(names, ", ")
	}
	return fmt.Sprintf("%s and %d more", strings.Join(names[:5], ", "), len(names)-5)
}
