package sample

import (
	"context"
	"fmt"
	"path/filepath"
	"testing"

	"github.com/dp2osr/dp2o/imageio"
)

// BenchmarkCandidates measures candidate throughput with the bundled tiny
// C-SD2 on the CPU: 8 candidates of one 32² input (processed at 64², 4
// steps, CFG) sampled one at a time or in batches.
//
//	go test ./preference/sample -run '^$' -bench Candidates -benchtime 5x
func BenchmarkCandidates(b *testing.B) {
	p := tinySD2(b)
	lr, err := imageio.Load(filepath.Join(assets, "sample", "lr_house.png"))
	if err != nil {
		b.Fatal(err)
	}
	lr = imageio.Resize(lr, 32, 32, imageio.Bicubic)
	o := sd2Options()
	o.Steps = 4
	seeds := SeedPool(0, 8)
	for _, batch := range []int{1, 4, 8} {
		b.Run(fmt.Sprintf("batch=%d", batch), func(b *testing.B) {
			s := &SD2{P: p, Opts: o}
			for i := 0; i < b.N; i++ {
				for lo := 0; lo < len(seeds); lo += batch {
					if _, err := s.Candidates(context.Background(), lr, "house", seeds[lo:min(lo+batch, len(seeds))]); err != nil {
						b.Fatal(err)
					}
				}
			}
			b.ReportMetric(float64(b.N*len(seeds))/b.Elapsed().Seconds(), "candidates/s")
		})
	}
}
