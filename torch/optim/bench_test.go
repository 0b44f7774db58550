package optim_test

import (
	"fmt"
	"os"
	"path/filepath"
	"runtime/debug"
	"strconv"
	"testing"

	"github.com/dp2osr/dp2o/internal/testutil"
	"github.com/dp2osr/dp2o/torch"
	"github.com/dp2osr/dp2o/torch/optim"
)

// BenchmarkStateSave writes an optimizer state of DP2O_BENCH_STATE_MB
// (default 512) MiB of float32 moments, as 32 tensors, to a safetensors
// file. peak-MiB is the growth of the process's peak resident set (VmHWM)
// above its resident set once the state is built: what a checkpoint costs
// in host memory beyond the state itself (run it alone, -run '^$', so
// that no earlier test set the peak).
//
//	go test ./torch/optim -run '^$' -bench StateSave -benchtime 1x
func BenchmarkStateSave(b *testing.B) {
	mb := 512
	if v, err := strconv.Atoi(os.Getenv("DP2O_BENCH_STATE_MB")); err == nil && v > 0 {
		mb = v
	}
	const parts = 32
	each := int64(mb) << 20 / 4 / parts
	st := &optim.State{Tensors: map[string]*torch.Tensor{}, Metadata: map[string]string{"optimizer": "adamw"}}
	defer st.Close()
	for i := range parts {
		st.Tensors[fmt.Sprintf("p%d.exp_avg", i)] = torch.Ones([]int64{each}, torch.Float32, torch.CPU)
	}
	path := filepath.Join(b.TempDir(), "optimizer.safetensors")
	debug.FreeOSMemory()
	before, err := testutil.ReadProcStatus()
	if err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	for range b.N {
		if err := st.Save(path); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	after, err := testutil.ReadProcStatus()
	if err != nil {
		b.Fatal(err)
	}
	b.ReportMetric(float64(after["VmHWM"]-before["VmRSS"])/(1<<20), "peak-MiB")
	b.ReportMetric(float64(mb), "state-MiB")
}
