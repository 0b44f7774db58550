package torch_test

import (
	"testing"

	"github.com/dp2osr/dp2o/internal/testutil"
	"github.com/dp2osr/dp2o/torch"
)

// BenchmarkAddSmall measures the per-op overhead of the binding: a 1×1
// float32 add, results freed by a scope every 1000 ops.
func BenchmarkAddSmall(b *testing.B) {
	x := torch.Unscope(torch.Ones([]int64{1, 1}, torch.Float32, torch.CPU))
	y := torch.Unscope(torch.Ones([]int64{1, 1}, torch.Float32, torch.CPU))
	defer x.Close()
	defer y.Close()
	b.ReportAllocs()
	s := torch.NewScope()
	n := 0
	for b.Loop() {
		x.Add(y)
		if n++; n == 1000 {
			s.Close()
			s = torch.NewScope()
			n = 0
		}
	}
	s.Close()
}

// BenchmarkAddSmallClose is BenchmarkAddSmall closing each result at once.
func BenchmarkAddSmallClose(b *testing.B) {
	x := torch.Unscope(torch.Ones([]int64{1, 1}, torch.Float32, torch.CPU))
	y := torch.Unscope(torch.Ones([]int64{1, 1}, torch.Float32, torch.CPU))
	defer x.Close()
	defer y.Close()
	b.ReportAllocs()
	for b.Loop() {
		x.Add(y).Close()
	}
}

// BenchmarkMatmulLarge is a 2048×2048 float32 matrix product.
func BenchmarkMatmulLarge(b *testing.B) {
	gen := torch.MustGenerator(torch.CPU, 0)
	x := torch.Unscope(torch.Randn([]int64{2048, 2048}, gen, torch.Float32, torch.CPU))
	y := torch.Unscope(torch.Randn([]int64{2048, 2048}, gen, torch.Float32, torch.CPU))
	defer x.Close()
	defer y.Close()
	for b.Loop() {
		x.Matmul(y).Close()
	}
}

// BenchmarkBareAdd is the reference of the two above: the same at::add on
// the same 1×1 tensors, looped in C++ inside the shim (no cgo crossing, no
// handle per op); its cpu-ns/op is the loop's own process CPU time.
func BenchmarkBareAdd(b *testing.B) {
	ns, err := torch.BareAddNs(b.N, torch.BareATen)
	if err != nil {
		b.Fatal(err)
	}
	b.ReportMetric(ns, "cpu-ns/op")
}

// BenchmarkAttentionMath is ScaledDotProductAttention's math order at the
// first level of SD2's UNet for a 512² image (batch 2, 5 heads of 64, 4096
// tokens; float32, no autograd): the whole (2, 5, 4096, 4096) score tensor
// ("whole", 671 MB) against blocks of query rows ("blocked", the default
// 4 MiB bound, SetAttentionChunkBytes), with the process's CPU time per op:
//
//	go test ./torch -run '^$' -bench AttentionMath -benchtime 3x
func BenchmarkAttentionMath(b *testing.B) {
	gen := torch.MustGenerator(torch.CPU, 0)
	s := torch.NewScope()
	defer s.Close()
	q := torch.Randn([]int64{2, 5, 4096, 64}, gen, torch.Float32, torch.CPU)
	k := torch.Randn([]int64{2, 5, 4096, 64}, gen, torch.Float32, torch.CPU)
	v := torch.Randn([]int64{2, 5, 4096, 64}, gen, torch.Float32, torch.CPU)
	def := torch.SetAttentionChunkBytes(0)
	defer torch.SetAttentionChunkBytes(def)
	for _, c := range []struct {
		name  string
		bound int64
	}{{"whole", 0}, {"blocked", def}} {
		b.Run(c.name, func(b *testing.B) {
			torch.SetAttentionChunkBytes(c.bound)
			torch.NoGrad(func() {
				torch.ScaledDotProductAttention(q, k, v, torch.AttentionOpts{Math: true}).Close() // warm-up
				cpu0 := testutil.CPUTime()
				b.ResetTimer()
				for range b.N {
					torch.ScaledDotProductAttention(q, k, v, torch.AttentionOpts{Math: true}).Close()
				}
				b.StopTimer()
				b.ReportMetric(float64((testutil.CPUTime()-cpu0).Milliseconds())/float64(b.N), "cpu-ms/op")
			})
		})
	}
}
