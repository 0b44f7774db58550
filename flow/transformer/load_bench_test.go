package transformer

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/dp2osr/dp2o/internal/testutil"
	"github.com/dp2osr/dp2o/torch"
	"github.com/dp2osr/dp2o/torch/detinit"
	"github.com/dp2osr/dp2o/torch/nn"
	"github.com/dp2osr/dp2o/torch/safetensors"
)

// BenchmarkLoadSharded writes a sharded bfloat16 checkpoint of the FLUX.1-dev
// transformer (its published config) truncated to DP2O_BENCH_LOAD_DOUBLE
// double and DP2O_BENCH_LOAD_SINGLE single blocks (default 2 and 2; 19 and
// 38 is the whole 24 GB model) with deterministic weights, one shard per
// block, then loads it with LoadFlux into bfloat16 on the CPU and reports
// the checkpoint size, the growth of anonymous memory (the one copy of the
// weights libtorch holds), the peak resident set during the load (which
// also counts the mapped file pages read: page cache, not a copy) and what
// the Go heap allocated. It runs only with DP2O_BENCH_LOAD=1 (it writes the
// checkpoint to a temporary folder):
//
//	DP2O_BENCH_LOAD=1 go test ./flow/transformer -run '^$' -bench LoadSharded -benchtime 1x
func BenchmarkLoadSharded(b *testing.B) {
	if os.Getenv("DP2O_BENCH_LOAD") != "1" {
		b.Skip("set DP2O_BENCH_LOAD=1 to write and load a large sharded checkpoint")
	}
	cfg, err := LoadConfig(testutil.Fixture(b, "flux/keys/flux_transformer/config.json"))
	require.NoError(b, err)
	cfg.NumLayers = testutil.EnvInt(b, "DP2O_BENCH_LOAD_DOUBLE", 2)
	cfg.NumSingleLayers = testutil.EnvInt(b, "DP2O_BENCH_LOAD_SINGLE", 2)
	dir := b.TempDir()
	cfgData, err := json.Marshal(cfg)
	require.NoError(b, err)
	require.NoError(b, os.WriteFile(filepath.Join(dir, "config.json"), cfgData, 0o644))

	// Shapes from a meta-device build; one shard per block, the rest in the last.
	mb := nn.NewBuilder(nil, torch.BFloat16, torch.Meta)
	_, err = New(mb, cfg)
	require.NoError(b, err)
	shapes := mb.Requested()
	mb.Params().Close()
	groups := map[string][]string{}
	for k := range shapes {
		g := "~rest"
		for _, p := range []string{"transformer_blocks.", "single_transformer_blocks."} {
			if rest, ok := strings.CutPrefix(k, p); ok {
				i, _, _ := strings.Cut(rest, ".")
				g = p + i
			}
		}
		groups[g] = append(groups[g], k)
	}
	var order []string
	for g := range groups {
		order = append(order, g)
	}
	sort.Strings(order)
	weightMap := map[string]string{}
	var size int64
	for i, g := range order {
		file := fmt.Sprintf("diffusion_pytorch_model-%05d-of-%05d.safetensors", i+1, len(order))
		manifest := map[string]detinit.Spec{}
		for _, k := range groups[g] {
			manifest[k] = detinit.Spec{Shape: shapes[k], DType: torch.BFloat16}
		}
		src, err := detinit.Build(manifest, uint64(i), torch.CPU)
		require.NoError(b, err)
		var list []safetensors.Tensor
		for _, k := range groups[g] {
			list = append(list, safetensors.Tensor{Name: k, DType: safetensors.BF16, Shape: shapes[k], Data: src[k].Bytes()})
			weightMap[k] = file
			size += src[k].Numel() * 2
		}
		src.Close()
		require.NoError(b, safetensors.Save(filepath.Join(dir, file), list, nil))
	}
	data, err := json.Marshal(map[string]any{"metadata": map[string]any{"total_size": size}, "weight_map": weightMap})
	require.NoError(b, err)
	require.NoError(b, os.WriteFile(filepath.Join(dir, WeightsFile+".index.json"), data, 0o644))
	runtime.GC()
	testutil.ReleaseMemory()

	b.ResetTimer()
	for range b.N {
		// Reset the peak resident set (Linux: clear_refs 5).
		require.NoError(b, os.WriteFile("/proc/self/clear_refs", []byte("5"), 0))
		before := testutil.ProcStatus(b)
		var ms0, ms1 runtime.MemStats
		runtime.ReadMemStats(&ms0)
		start := time.Now()
		f, err := LoadFlux(dir, torch.BFloat16, torch.CPU)
		require.NoError(b, err)
		elapsed := time.Since(start)
		after := testutil.ProcStatus(b)
		runtime.ReadMemStats(&ms1)
		mib := func(n int64) float64 { return float64(n) / (1 << 20) }
		b.ReportMetric(mib(size), "ckpt-MiB")
		b.ReportMetric(mib(after["RssAnon"]-before["RssAnon"]), "anon-growth-MiB")
		b.ReportMetric(mib(after["VmHWM"]-before["VmRSS"]), "peak-rss-growth-MiB")
		b.ReportMetric(mib(int64(ms1.TotalAlloc-ms0.TotalAlloc)), "go-alloc-MiB")
		b.ReportMetric(float64(elapsed.Milliseconds()), "load-ms")
		f.Close()
	}
}
