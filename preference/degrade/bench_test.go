package degrade

import (
	"testing"

	"github.com/dp2osr/dp2o/torch"
)

// BenchmarkApply512 makes one LR image (128×128) from a 512×512 HR crop of
// a 600×560 image with each built-in config, the sampler and the chain
// included: one op is one training input.
func BenchmarkApply512(b *testing.B) {
	for _, cfg := range []Config{Testing(), TrainFirstOrder()} {
		b.Run(cfg.Name, func(b *testing.B) {
			img := torch.Unscope(torch.Rand([]int64{1, 3, 600, 560}, torch.MustGenerator(torch.CPU, 1), torch.Float32, torch.CPU))
			defer img.Close()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				crop, lq, _, err := cfg.Apply(img, uint64(i))
				if err != nil {
					b.Fatal(err)
				}
				crop.Close()
				lq.Close()
			}
		})
	}
}

// BenchmarkDiffJPEG512 is one DiffJPEG pass over a 512×512 image.
func BenchmarkDiffJPEG512(b *testing.B) {
	s := torch.NewScope()
	defer s.Close()
	img := torch.Rand([]int64{1, 3, 512, 512}, torch.MustGenerator(torch.CPU, 1), torch.Float32, torch.CPU)
	q := torch.FromSlice([]float32{80}, 1)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		DiffJPEG(img, q, nil).Close()
	}
}

// BenchmarkDegrade512 is the chain alone (Degrade) on a 512×512 image with
// the testing config, over the records of seeds 0, 1, 2, … (the Python side:
// scripts/bench_degrade.py).
func BenchmarkDegrade512(b *testing.B) {
	cfg := Testing()
	img := torch.Unscope(torch.Rand([]int64{1, 3, 512, 512}, torch.MustGenerator(torch.CPU, 1), torch.Float32, torch.CPU))
	defer img.Close()
	for i := 0; i < 2; i++ { // warm-up
		gen := torch.MustGenerator(torch.CPU, uint64(i))
		rec, _ := cfg.Sample(gen)
		lq, _, _ := Degrade(img, rec, gen, nil)
		lq.Close()
	}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		gen := torch.MustGenerator(torch.CPU, uint64(i))
		rec, err := cfg.Sample(gen)
		if err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
		lq, _, err := Degrade(img, rec, gen, nil)
		if err != nil {
			b.Fatal(err)
		}
		lq.Close()
	}
}
