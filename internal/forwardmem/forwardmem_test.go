package forwardmem

import (
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/dp2osr/dp2o/internal/testutil"
	"github.com/dp2osr/dp2o/reward/afine"
	"github.com/dp2osr/dp2o/reward/clipiqa"
	"github.com/dp2osr/dp2o/reward/maniqa"
	"github.com/dp2osr/dp2o/reward/musiq"
	"github.com/dp2osr/dp2o/reward/topiq"
	"github.com/dp2osr/dp2o/torch"
	"github.com/dp2osr/dp2o/torch/nn"
)

// BenchmarkForwardMemory reports, per model, the peak resident-set growth
// of one forward pass under NoGrad (peak-MiB), with one libtorch thread.
func BenchmarkForwardMemory(b *testing.B) {
	n, side := int64(testutil.EnvInt(b, "DP2O_BENCH_BATCH", 1)), int64(testutil.EnvInt(b, "DP2O_BENCH_SIZE", 512))
	defer torch.SetNumThreads(torch.NumThreads())
	torch.SetNumThreads(1)
	newB := func() *nn.Builder { return nn.NewBuilder(nil, torch.Float32, torch.CPU) }
	image := func() *torch.Tensor {
		return torch.Unscope(torch.Scoped(func() *torch.Tensor {
			return torch.Rand([]int64{n, 3, side, side}, nil, torch.Float32, torch.CPU)
		}))
	}
	x, y := image(), image()
	defer x.Close()
	defer y.Close()
	run := func(name string, build func() (forward func() *torch.Tensor, done func())) {
		b.Run(name, func(b *testing.B) {
			forward, done := build()
			defer done()
			testutil.ReportPeakRSS(b, func() { torch.NoGrad(func() { forward().Close() }) })
		})
	}
	closer := func(b *nn.Builder, m interface{ Close() }) func() {
		return func() { m.Close(); b.Params().Close() }
	}
	run("maniqa", func() (func() *torch.Tensor, func()) {
		bl := newB()
		m, err := maniqa.New(bl, maniqa.KonIQ)
		require.NoError(b, err)
		return func() *torch.Tensor { return m.Forward(x, nil) }, closer(bl, m)
	})
	run("musiq", func() (func() *torch.Tensor, func()) {
		bl := newB()
		m, err := musiq.New(bl, musiq.KonIQ)
		require.NoError(b, err)
		return func() *torch.Tensor { return m.Forward(x, nil) }, closer(bl, m)
	})
	for _, c := range []struct {
		name string
		cfg  topiq.Config
	}{{"topiq_nr", topiq.NRConfig}, {"topiq_fr", topiq.FRConfig}} {
		run(c.name, func() (func() *torch.Tensor, func()) {
			bl := newB()
			m, err := topiq.New(bl, c.cfg)
			require.NoError(b, err)
			return func() *torch.Tensor { return m.Forward(x, y, nil) }, closer(bl, m)
		})
	}
	run("afine_nr", func() (func() *torch.Tensor, func()) {
		bl := newB()
		m, err := afine.New(bl)
		require.NoError(b, err)
		return func() *torch.Tensor { return m.ForwardNR(x, nil) }, closer(bl, m)
	})
	run("afine_fr", func() (func() *torch.Tensor, func()) {
		bl := newB()
		m, err := afine.New(bl)
		require.NoError(b, err)
		return func() *torch.Tensor { return m.ForwardFR(x, y, nil) }, closer(bl, m)
	})
	run("clipiqa+", func() (func() *torch.Tensor, func()) {
		bl := newB()
		m, err := clipiqa.New(bl, false, nil)
		require.NoError(b, err)
		return func() *torch.Tensor { return m.Forward(x, nil) }, closer(bl, m)
	})
}
