package vae

import (
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/dp2osr/dp2o/internal/testutil"
	"github.com/dp2osr/dp2o/torch"
	"github.com/dp2osr/dp2o/torch/nn"
)

// BenchmarkForwardMemory reports the peak resident-set growth (peak-MiB)
// of one full-size SD2 VAE encoder and decoder pass (the published config,
// zero weights, float32 CPU, under NoGrad) on DP2O_BENCH_BATCH images
// (default 1) of DP2O_BENCH_SIZE² pixels (default 512): candidate
// generation decodes whole seed batches.
//
//	go test ./diffusion/vae -run '^$' -bench ForwardMemory -benchtime 1x
func BenchmarkForwardMemory(b *testing.B) {
	n, side := int64(testutil.EnvInt(b, "DP2O_BENCH_BATCH", 1)), int64(testutil.EnvInt(b, "DP2O_BENCH_SIZE", 512))
	defer torch.SetNumThreads(torch.NumThreads())
	torch.SetNumThreads(1)
	cfg, err := LoadConfig(testutil.Fixture(b, "sd2/keys/vae/config.json"))
	require.NoError(b, err)
	bl := nn.NewBuilder(nil, torch.Float32, torch.CPU)
	m, err := New(bl, cfg)
	require.NoError(b, err)
	defer bl.Params().Close()
	x := torch.Unscope(torch.Scoped(func() *torch.Tensor {
		return torch.Rand([]int64{n, int64(cfg.InChannels), side, side}, nil, torch.Float32, torch.CPU)
	}))
	defer x.Close()
	z := torch.Unscope(torch.Scoped(func() *torch.Tensor {
		f := int64(1) << (len(cfg.BlockOutChannels) - 1)
		return torch.Randn([]int64{n, int64(cfg.LatentChannels), side / f, side / f}, nil, torch.Float32, torch.CPU)
	}))
	defer z.Close()
	for _, c := range []struct {
		name string
		f    func() *torch.Tensor
	}{{"encoder", func() *torch.Tensor { return m.Encoder.Forward(x, nil) }},
		{"decoder", func() *torch.Tensor { return m.Decoder.Forward(z, nil) }}} {
		b.Run(c.name, func(b *testing.B) {
			testutil.ReportPeakRSS(b, func() { torch.NoGrad(func() { c.f().Close() }) })
		})
	}
}
