package optim_test

import (
	"fmt"
	"os"
	"path/filepath"
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
// in host memory beyond the state itself.
//
//	go test ./torch/optim -run '^$' -bench StateSave -benchtime 1x
func BenchmarkStateSave(b *testing.B) {
	mb := benchStateMB()
	const parts = 32
	each := int64(mb) << 20 / 4 / parts
	st := &optim.State{Tensors: map[string]*torch.Tensor{}, Metadata: map[string]string{"optimizer": "adamw"}}
	defer st.Close()
	for i := range parts {
		st.Tensors[fmt.Sprintf("p%d.exp_avg", i)] = torch.Ones([]int64{each}, torch.Float32, torch.CPU)
	}
	path := filepath.Join(b.TempDir(), "optimizer.safetensors")
	testutil.ReleaseMemory()
	testutil.ResetPeak(b)
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

// benchStateMB is DP2O_BENCH_STATE_MB, the benchmarks' state size in MiB
// (512 by default).
func benchStateMB() int {
	if v, err := strconv.Atoi(os.Getenv("DP2O_BENCH_STATE_MB")); err == nil && v > 0 {
		return v
	}
	return 512
}

// BenchmarkStateRestore restores AdamW over DP2O_BENCH_STATE_MB/2 (256)
// MiB of float32 weights, 32 tensors, from a saved state (512 MiB of
// moments): read whole into memory first (LoadState), or tensor by tensor
// as the optimizer restores them (OpenState, what a resumed run does).
// peak-MiB is the growth of the peak resident set above the resident set
// before the load; the restored moments themselves are 512 of it in both.
//
//	MALLOC_MMAP_THRESHOLD_=131072 go test ./torch/optim -run '^$' -bench StateRestore -benchtime 1x
func BenchmarkStateRestore(b *testing.B) {
	mb := benchStateMB()
	const parts = 32
	each := int64(mb) << 20 / 8 / parts
	var params []optim.Param
	st := &optim.State{Tensors: map[string]*torch.Tensor{}, Metadata: map[string]string{"optimizer": "adamw", "lr": "0.001"}}
	for i := range parts {
		name := fmt.Sprint("p", i)
		params = append(params, optim.Param{Name: name, Tensor: torch.Zeros([]int64{each}, torch.Float32, torch.CPU)})
		st.Tensors[name+".step"] = torch.ScalarOf(1, torch.Int64, torch.CPU)
		st.Tensors[name+".exp_avg"] = torch.Ones([]int64{each}, torch.Float32, torch.CPU)
		st.Tensors[name+".exp_avg_sq"] = torch.Ones([]int64{each}, torch.Float32, torch.CPU)
	}
	defer func() {
		for _, p := range params {
			p.Tensor.Close()
		}
	}()
	path := filepath.Join(b.TempDir(), "optimizer.safetensors")
	if err := st.Save(path); err != nil {
		b.Fatal(err)
	}
	st.Close()
	for _, c := range []struct {
		name string
		open func() (*optim.State, error)
	}{
		{"whole-file", func() (*optim.State, error) { return optim.LoadState(path) }},
		{"tensor-by-tensor", func() (*optim.State, error) { return optim.OpenState(path, nil) }},
	} {
		b.Run(c.name, func(b *testing.B) {
			var peak float64
			for range b.N {
				opt, err := optim.NewAdamW(params, optim.DefaultAdamW())
				if err != nil {
					b.Fatal(err)
				}
				testutil.ReleaseMemory()
				testutil.ResetPeak(b)
				before, err := testutil.ReadProcStatus()
				if err != nil {
					b.Fatal(err)
				}
				s, err := c.open()
				if err == nil {
					err = opt.LoadStateDict(s)
					s.Close()
				}
				if err != nil {
					b.Fatal(err)
				}
				after, err := testutil.ReadProcStatus()
				if err != nil {
					b.Fatal(err)
				}
				peak = max(peak, float64(after["VmHWM"]-before["VmRSS"])/(1<<20))
				opt.Close()
			}
			b.ReportMetric(peak, "peak-MiB")
		})
	}
}
