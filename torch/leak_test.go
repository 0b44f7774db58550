package torch_test

import (
	"os"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/dp2osr/dp2o/torch"
)

// rss is the resident set size of the process in bytes (/proc/self/statm).
func rss(t *testing.T) int64 {
	t.Helper()
	raw, err := os.ReadFile("/proc/self/statm")
	require.NoError(t, err)
	f := strings.Fields(string(raw))
	require.GreaterOrEqual(t, len(f), 2)
	pages, err := strconv.ParseInt(f[1], 10, 64)
	require.NoError(t, err)
	return pages * int64(os.Getpagesize())
}

// TestNoLeakTrainingLoop runs 10,000 forward and backward passes of a small
// Linear → GELU → LayerNorm block, one scope per step: the live handle and
// byte counters end where they started and the RSS stays flat after a
// warm-up.
func TestNoLeakTrainingLoop(t *testing.T) {
	const warmup, iters = 1000, 10000
	startTensors, startBytes := torch.LiveTensors(), torch.LiveBytes()
	dev := torch.CPU
	gen := torch.MustGenerator(dev, 1)
	w := torch.Scoped(func() *torch.Tensor { return torch.Randn([]int64{32, 32}, gen, torch.Float32, dev).MulScalar(0.1) })
	b := torch.Unscope(torch.Zeros([]int64{32}, torch.Float32, dev))
	lw := torch.Unscope(torch.Ones([]int64{32}, torch.Float32, dev))
	lb := torch.Unscope(torch.Zeros([]int64{32}, torch.Float32, dev))
	params := []*torch.Tensor{w, b, lw, lb}
	for _, p := range params {
		p.SetRequiresGrad(true)
	}
	step := func() {
		s := torch.NewScope()
		defer s.Close()
		x := torch.Randn([]int64{8, 32}, gen, torch.Float32, dev)
		y := torch.LayerNorm(torch.Linear(x, w, b).Gelu(), []int64{32}, lw, lb, 1e-5)
		loss := y.Square().Mean()
		loss.Backward(nil)
		torch.NoGrad(func() {
			for _, p := range params {
				g := p.Grad()
				p.Sub_(g, 1e-3)
				p.ZeroGrad(true)
			}
		})
	}
	start := time.Now()
	for range warmup {
		step()
	}
	runtime.GC()
	base := rss(t)
	liveAfterWarmup := torch.LiveTensors()
	for range iters {
		step()
	}
	runtime.GC()
	grown := rss(t) - base
	t.Logf("%d steps in %v; RSS %d MB → growth %.2f MB; live handles %d", warmup+iters, time.Since(start),
		base>>20, float64(grown)/(1<<20), torch.LiveTensors())
	require.LessOrEqual(t, torch.LiveTensors(), liveAfterWarmup, "handles leaked during the loop")
	require.Less(t, grown, int64(20<<20), "RSS grew by %d bytes", grown)
	for _, p := range params {
		p.Close()
	}
	require.LessOrEqual(t, torch.LiveTensors(), startTensors)
	require.LessOrEqual(t, torch.LiveBytes(), startBytes)
}
