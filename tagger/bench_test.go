package tagger

import (
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"sync"
	"testing"

	"github.com/dp2osr/dp2o/imageio"
	"github.com/dp2osr/dp2o/internal/testutil"
	"github.com/dp2osr/dp2o/torch"
)

// benchTagger is the fixture's full-size model built straight from the
// regenerated weights (no checkpoint files), the shipped DAPE merged.
var benchTagger = sync.OnceValues(func() (*Tagger, error) {
	w, base, err := fixtureWeights()
	if err != nil {
		return nil, err
	}
	defer base.Close()
	vision, err := fixtureVisionConfig()
	if err != nil {
		return nil, err
	}
	cfg, err := Options{TagList: fixturePath("ram/data/ram_tag_list.txt"), Vision: &vision}.Config()
	if err != nil {
		return nil, err
	}
	t, err := FromSource(base, cfg, benchDevice())
	if err != nil {
		return nil, err
	}
	lora, err := loadShippedLoRA(w)
	if err != nil {
		t.Close()
		return nil, err
	}
	defer lora.Close()
	if err := t.MergeDAPE(lora); err != nil {
		t.Close()
		return nil, err
	}
	return t, nil
})

// benchDevice is $DP2O_DEVICE (cpu by default).
func benchDevice() torch.Device {
	if d, err := torch.ParseDevice(os.Getenv("DP2O_DEVICE")); err == nil && os.Getenv("DP2O_DEVICE") != "" {
		return d
	}
	return torch.CPU
}

// benchThreads applies $DP2O_BENCH_THREADS (libtorch CPU threads).
func benchThreads() {
	if n, err := strconv.Atoi(os.Getenv("DP2O_BENCH_THREADS")); err == nil && n > 0 {
		torch.SetNumThreads(n)
		if n > 1 {
			runtime.GOMAXPROCS(1)
		}
	}
}

// BenchmarkTag is one image's tagging (the case's PNG, already decoded):
// preprocessing, Swin-L, the head, decisions and the prompt.
// scripts/bench_ram.py runs it beside the official Python code.
func BenchmarkTag(b *testing.B) {
	benchThreads()
	t, err := benchTagger()
	if err != nil {
		b.Fatal(err)
	}
	cases, err := readTaggerCases()
	if err != nil {
		b.Fatal(err)
	}
	img, err := imageio.Load(fixturePath(filepath.Join("ram", cases.Cases[0].image)))
	if err != nil {
		b.Fatal(err)
	}
	if _, err := t.Tag(img); err != nil { // warm-up
		b.Fatal(err)
	}
	c0 := testutil.CPUTime()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := t.Tag(img); err != nil {
			b.Fatal(err)
		}
	}
	if d := t.Device(); d.IsCUDA() {
		_ = torch.CUDASynchronize(d.Index)
	}
	b.StopTimer()
	// Process CPU time per image: on a shared machine the wall time
	// mostly measures the other processes.
	b.ReportMetric(float64(testutil.CPUTime()-c0)/1e6/float64(b.N), "cpu-ms/op")
}
