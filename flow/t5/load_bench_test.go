package t5

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/dp2osr/dp2o/internal/testutil"
	"github.com/dp2osr/dp2o/torch"
	"github.com/dp2osr/dp2o/torch/detinit"
	"github.com/dp2osr/dp2o/torch/nn"
)

// BenchmarkLoadSharded writes a sharded bfloat16 checkpoint of FLUX's
// T5-XXL truncated to DP2O_BENCH_LOAD_LAYERS blocks (default 2; 24 is the
// whole 9.5 GB model) with deterministic weights (torch/detinit), one shard per block as
// published, then loads it with LoadEncoder into bfloat16 on the CPU and
// reports the checkpoint size, the growth of anonymous memory (the one copy
// of the weights libtorch holds), the peak resident set during the load
// (which also counts the mapped file pages read, page cache that is not
// copied) and what the Go heap allocated during the load. It runs
// only with DP2O_BENCH_LOAD=1 (it writes the checkpoint to a temporary
// folder).
func BenchmarkLoadSharded(b *testing.B) {
	if os.Getenv("DP2O_BENCH_LOAD") != "1" {
		b.Skip("set DP2O_BENCH_LOAD=1 to write and load a large sharded checkpoint")
	}
	layers := 2
	if s := os.Getenv("DP2O_BENCH_LOAD_LAYERS"); s != "" {
		var err error
		layers, err = strconv.Atoi(s)
		require.NoError(b, err)
	}
	root := testutil.Fixture(b, "flux/keys/t5_xxl_encoder")
	cfg, err := LoadConfig(filepath.Join(root, "config.json"))
	require.NoError(b, err)
	cfg.NumLayers = layers
	dir := b.TempDir()
	cfgData, err := json.Marshal(cfg)
	require.NoError(b, err)
	require.NoError(b, os.WriteFile(filepath.Join(dir, "config.json"), cfgData, 0o644))

	// Shapes from a meta-device build; one shard per block, the rest in the last.
	mb := nn.NewBuilder(nil, torch.BFloat16, torch.Meta)
	_, err = NewEncoder(mb, cfg)
	require.NoError(b, err)
	meta, err := mb.Finish()
	require.NoError(b, err)
	shapes := mb.Requested()
	meta.Close()
	groups := map[string][]string{}
	for k := range shapes {
		g := "rest"
		if rest, ok := strings.CutPrefix(k, "encoder.block."); ok {
			g, _, _ = strings.Cut(rest, ".")
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
		// Deterministic weights (dp2o-init-v1), seeded per shard.
		file := fmt.Sprintf("model-%05d-of-%05d.safetensors", i+1, len(order))
		manifest := map[string]detinit.Spec{}
		for _, k := range groups[g] {
			manifest[k] = detinit.Spec{Shape: shapes[k], DType: torch.BFloat16}
		}
		src, err := detinit.Build(manifest, uint64(i), torch.CPU)
		require.NoError(b, err)
		var list []safetensorsTensor
		for _, k := range groups[g] {
			list = append(list, safetensorsTensor{k, src[k]})
			weightMap[k] = file
			size += src[k].Numel() * 2
		}
		require.NoError(b, saveTensors(filepath.Join(dir, file), list))
		src.Close()
	}
	data, err := json.Marshal(map[string]any{"metadata": map[string]any{"total_size": size}, "weight_map": weightMap})
	require.NoError(b, err)
	require.NoError(b, os.WriteFile(filepath.Join(dir, IndexFile), data, 0o644))
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
		e, err := LoadEncoder(dir, torch.BFloat16, torch.CPU)
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
		e.Close()
	}
}
