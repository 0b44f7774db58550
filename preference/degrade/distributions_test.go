package degrade

import (
	"fmt"
	"math"
	"reflect"
	"testing"

	"github.com/dp2osr/dp2o/internal/testutil"
	"github.com/dp2osr/dp2o/torch"
)

// The parts of distributions.json the sampler is built from.
type distKernel struct {
	KernelSize struct {
		Choices []int `json:"choices"`
	} `json:"kernel_size"`
	Sinc struct {
		Prob   float64 `json:"prob"`
		OmegaC struct {
			Small [2]float64 `json:"if_kernel_size_lt_13"`
			Large [2]float64 `json:"else"`
		} `json:"omega_c"`
	} `json:"sinc"`
	Mixed struct {
		Type struct {
			List    []string  `json:"list"`
			Weights []float64 `json:"weights"`
		} `json:"type"`
		SigmaX struct {
			U [2]float64 `json:"U"`
		} `json:"sigma_x"`
		BetaG struct {
			BetaG [2]float64 `json:"betag"`
		} `json:"beta_generalized"`
		BetaP struct {
			BetaP [2]float64 `json:"betap"`
		} `json:"beta_plateau"`
	} `json:"mixed"`
	PaddedTo int `json:"padded_to"`
}

type distConfig struct {
	SF        int        `json:"sf"`
	Kernel1   distKernel `json:"kernel1"`
	Kernel2   distKernel `json:"kernel2_drawn_but_unused"`
	FinalSinc struct {
		Prob    float64    `json:"prob"`
		Choices []int      `json:"kernel_size_choices"`
		OmegaC  [2]float64 `json:"omega_c"`
		PadTo   int        `json:"pad_to"`
	} `json:"final_sinc"`
	Stage1 struct {
		Resize struct {
			UpDown    map[string]float64 `json:"updown"`
			ScaleUp   [2]float64         `json:"scale_up"`
			ScaleDown [2]float64         `json:"scale_down"`
			Mode      []string           `json:"mode"`
		} `json:"resize"`
		NoiseKind struct {
			GaussianIf float64 `json:"gaussian_if_random()<"`
		} `json:"noise_kind"`
		Gaussian struct {
			Sigma    [2]float64 `json:"sigma"`
			GrayProb float64    `json:"gray_prob"`
		} `json:"gaussian"`
		Poisson struct {
			Scale    [2]float64 `json:"scale"`
			GrayProb float64    `json:"gray_prob"`
		} `json:"poisson"`
		JPEG struct {
			U [2]float64 `json:"U"`
		} `json:"jpeg_quality"`
	} `json:"stage1"`
	SecondOrder struct {
		Prob float64 `json:"prob"`
	} `json:"second_order"`
	Final struct {
		ResizeSincFirstIf float64  `json:"resize_sinc_then_jpeg_if_random()<"`
		Mode              []string `json:"mode"`
		JPEG              struct {
			U [2]float64 `json:"U"`
		} `json:"jpeg_quality"`
	} `json:"final"`
}

func sameInts(a, b []int) bool { return fmt.Sprint(a) == fmt.Sprint(b) }

// config turns a distributions.json entry into a Config, failing where the
// entry describes something the sampler does not draw that way (fixed
// constants of the reference: ωc ranges, kernel size lists, the 0.5 order
// gate, the mode list).
func (d distConfig) config(t *testing.T, name string) Config {
	t.Helper()
	ck := func(what string, k distKernel) {
		if !sameInts(k.KernelSize.Choices, kernelSizes(k.PaddedTo)) {
			t.Fatalf("%s: %s sizes %v are not range(3, %d, 2)", name, what, k.KernelSize.Choices, k.PaddedTo)
		}
		if k.Sinc.OmegaC.Small != [2]float64{pi / 3, pi} || k.Sinc.OmegaC.Large != [2]float64{pi / 5, pi} {
			t.Fatalf("%s: %s sinc ωc ranges %v / %v differ from the sampler's", name, what, k.Sinc.OmegaC.Small, k.Sinc.OmegaC.Large)
		}
	}
	ck("kernel1", d.Kernel1)
	ck("kernel2", d.Kernel2)
	if !sameInts(d.FinalSinc.Choices, kernelSizes(d.Kernel2.PaddedTo)) || d.FinalSinc.PadTo != d.Kernel2.PaddedTo ||
		d.FinalSinc.OmegaC != [2]float64{pi / 3, pi} {
		t.Fatalf("%s: final sinc %+v is not what the sampler draws", name, d.FinalSinc)
	}
	r := d.Stage1.Resize
	if r.ScaleUp[0] != 1 || r.ScaleDown[1] != 1 || fmt.Sprint(r.Mode) != fmt.Sprint(ResizeModes) || fmt.Sprint(d.Final.Mode) != fmt.Sprint(ResizeModes) {
		t.Fatalf("%s: resize %+v / final modes %v are not what the sampler draws", name, r, d.Final.Mode)
	}
	if d.Final.ResizeSincFirstIf != ResizeSincFirstProb {
		t.Fatalf("%s: final order gate %v (the sampler uses %v, as upstream)", name, d.Final.ResizeSincFirstIf, ResizeSincFirstProb)
	}
	if d.Stage1.Gaussian.GrayProb != d.Stage1.Poisson.GrayProb {
		t.Fatalf("%s: gaussian and poisson gray probabilities differ", name)
	}
	return Config{
		Name: name, SF: d.SF,
		BlurKernelSize: d.Kernel1.PaddedTo, KernelList: d.Kernel1.Mixed.Type.List, KernelProb: d.Kernel1.Mixed.Type.Weights,
		SincProb: d.Kernel1.Sinc.Prob, BlurSigma: d.Kernel1.Mixed.SigmaX.U, BetaGRange: d.Kernel1.Mixed.BetaG.BetaG, BetaPRange: d.Kernel1.Mixed.BetaP.BetaP,
		BlurKernelSize2: d.Kernel2.PaddedTo, KernelList2: d.Kernel2.Mixed.Type.List, KernelProb2: d.Kernel2.Mixed.Type.Weights,
		SincProb2: d.Kernel2.Sinc.Prob, BlurSigma2: d.Kernel2.Mixed.SigmaX.U, BetaGRange2: d.Kernel2.Mixed.BetaG.BetaG, BetaPRange2: d.Kernel2.Mixed.BetaP.BetaP,
		FinalSincProb: d.FinalSinc.Prob,
		ResizeProb:    [3]float64{r.UpDown["up"], r.UpDown["down"], r.UpDown["keep"]}, ResizeRange: [2]float64{r.ScaleDown[0], r.ScaleUp[1]},
		GaussianNoiseProb: d.Stage1.NoiseKind.GaussianIf, NoiseRange: d.Stage1.Gaussian.Sigma, PoissonScaleRange: d.Stage1.Poisson.Scale,
		GrayNoiseProb: d.Stage1.Gaussian.GrayProb, JPEGRange: d.Stage1.JPEG.U,
		SecondOrderProb: d.SecondOrder.Prob, JPEGRange2: d.Final.JPEG.U,
	}
}

func loadDistributions(t *testing.T) map[string]Config {
	var f struct {
		Configs map[string]distConfig `json:"configs"`
	}
	readJSON(t, "degrade/distributions.json", &f)
	if len(f.Configs) == 0 {
		t.Fatal("distributions.json has no configs")
	}
	out := map[string]Config{}
	for name, d := range f.Configs {
		out[name] = d.config(t, name)
	}
	return out
}

// TestBuiltinConfigsMatchDistributions checks that the built-in configs are
// the reference's (where distributions.json names one of them).
func TestBuiltinConfigsMatchDistributions(t *testing.T) {
	for name, want := range loadDistributions(t) {
		got, err := Named(name)
		if err != nil {
			t.Logf("%s: no built-in config of that name", name)
			continue
		}
		got.GTSize = 0 // the HR crop is not part of the reference's degradation
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("built-in %s:\n got %+v\nwant %+v", name, got, want)
		}
	}
}

// freq checks an observed frequency against p at 5 binomial standard
// deviations (exactly, when p is 0 or 1).
func freq(t *testing.T, what string, k, n int, p float64) {
	t.Helper()
	got := float64(k) / float64(n)
	tol := 5*math.Sqrt(p*(1-p)/float64(n)) + 1e-12
	if math.Abs(got-p) > tol {
		t.Errorf("%s: frequency %.4f over %d draws, want %.4f ± %.4f", what, got, n, p, tol)
	}
}

func inRange(t *testing.T, what string, v float64, r [2]float64) {
	t.Helper()
	if v < r[0] || v > r[1] {
		t.Errorf("%s %v outside %v", what, v, r)
	}
}

// TestSamplerDistributions samples records with many seeds and checks the
// frequencies and ranges of every decision against distributions.json, then
// runs the chain on a small image for part of them and checks the torch
// draws (level, grey flag, both JPEG qualities).
func TestSamplerDistributions(t *testing.T) {
	testutil.NoLeak(t)
	const records, chains = 2000, 200
	for name, cfg := range loadDistributions(t) {
		t.Run(name, func(t *testing.T) {
			counts := map[string]int{}
			nonSinc, anisoLike, finalSinc := 0, 0, 0
			img := torch.Unscope(torch.Rand([]int64{1, 3, int64(8 * cfg.SF), int64(8 * cfg.SF)}, torch.MustGenerator(torch.CPU, 1), torch.Float32, torch.CPU))
			defer img.Close()
			grayChains, done := 0, 0
			for seed := range records {
				gen := torch.MustGenerator(torch.CPU, uint64(seed))
				rec, err := cfg.Sample(gen)
				if err != nil {
					t.Fatal(err)
				}
				k := rec.Kernel1
				counts["size"+fmt.Sprint(k.Size)]++
				if rec.Kernel1PaddedSize != cfg.BlurKernelSize {
					t.Fatalf("padded size %d", rec.Kernel1PaddedSize)
				}
				if k.Type == KernelSinc {
					counts["sinc"]++
					lo := pi / 3
					if k.Size >= 13 {
						lo = pi / 5
					}
					inRange(t, "omega_c", k.OmegaC, [2]float64{lo, pi})
				} else {
					nonSinc++
					counts[k.Type]++
					inRange(t, "sigma_x", k.SigmaX, cfg.BlurSigma)
					switch k.Type {
					case KernelAniso, KernelGeneralizedAniso, KernelPlateauAniso:
						anisoLike++
						inRange(t, "sigma_y", k.SigmaY, cfg.BlurSigma)
						inRange(t, "theta", k.Theta, [2]float64{-pi, pi})
					}
					switch k.Type {
					case KernelGeneralizedIso, KernelGeneralizedAniso:
						inRange(t, "beta_g", k.Beta, [2]float64{cfg.BetaGRange[0], cfg.BetaGRange[1]})
					case KernelPlateauIso, KernelPlateauAniso:
						inRange(t, "beta_p", k.Beta, [2]float64{cfg.BetaPRange[0], cfg.BetaPRange[1]})
					}
				}
				if rec.SincKernel.Type == KernelSinc {
					finalSinc++
					counts["fsize"+fmt.Sprint(rec.SincKernel.Size)]++
					inRange(t, "final omega_c", rec.SincKernel.OmegaC, [2]float64{pi / 3, pi})
					if rec.SincKernel.PadTo != cfg.BlurKernelSize2 {
						t.Fatalf("final sinc pad_to %d", rec.SincKernel.PadTo)
					}
				} else if rec.SincKernel.Size != cfg.BlurKernelSize2 {
					t.Fatalf("pulse size %d", rec.SincKernel.Size)
				}
				r := rec.Stage1.Resize
				counts[r.UpDown]++
				counts["m1"+r.Mode]++
				switch r.UpDown {
				case ResizeUp:
					inRange(t, "up scale", r.Scale, [2]float64{1, cfg.ResizeRange[1]})
				case ResizeDown:
					inRange(t, "down scale", r.Scale, [2]float64{cfg.ResizeRange[0], 1})
				default:
					if r.Scale != 1 {
						t.Fatalf("keep scale %v", r.Scale)
					}
				}
				counts[rec.Stage1.Noise.Kind]++
				counts[rec.Final.Order]++
				counts["m2"+rec.Final.Mode]++
				if rec.SecondOrder.Applied || rec.SecondOrder.Prob != cfg.SecondOrderProb {
					t.Fatalf("second order %+v", rec.SecondOrder)
				}
				if seed < chains {
					lq, out, err := Degrade(img, rec, gen, nil)
					if err == ErrDegenerateJPEG {
						continue
					}
					if err != nil {
						t.Fatalf("seed %d: %v", seed, err)
					}
					lq.Close()
					done++
					n := out.Stage1.Noise
					inRange(t, "noise level", float64(n.Level), n.Range)
					if n.IsGray == 1 {
						grayChains++
					}
					inRange(t, "q1", float64(out.Stage1.JPEGQuality), cfg.JPEGRange)
					inRange(t, "q2", float64(out.Final.JPEGQuality), cfg.JPEGRange2)
				}
			}
			freq(t, "kernel1 sinc", counts["sinc"], records, cfg.SincProb)
			sizes := kernelSizes(cfg.BlurKernelSize)
			for _, s := range sizes {
				freq(t, fmt.Sprintf("kernel1 size %d", s), counts["size"+fmt.Sprint(s)], records, 1/float64(len(sizes)))
			}
			wsum := 0.0
			for _, w := range cfg.KernelProb {
				wsum += w
			}
			for i, typ := range cfg.KernelList {
				freq(t, "kernel1 type "+typ, counts[typ], nonSinc, cfg.KernelProb[i]/wsum)
			}
			freq(t, "final sinc", finalSinc, records, cfg.FinalSincProb)
			fs := kernelSizes(cfg.BlurKernelSize2)
			for _, s := range fs {
				if finalSinc > 0 {
					freq(t, fmt.Sprintf("final sinc size %d", s), counts["fsize"+fmt.Sprint(s)], finalSinc, 1/float64(len(fs)))
				}
			}
			psum := cfg.ResizeProb[0] + cfg.ResizeProb[1] + cfg.ResizeProb[2]
			for i, ud := range []string{ResizeUp, ResizeDown, ResizeKeep} {
				freq(t, "resize "+ud, counts[ud], records, cfg.ResizeProb[i]/psum)
			}
			for _, m := range ResizeModes {
				freq(t, "stage-1 mode "+m, counts["m1"+m], records, 1/float64(len(ResizeModes)))
				freq(t, "final mode "+m, counts["m2"+m], records, 1/float64(len(ResizeModes)))
			}
			freq(t, "gaussian noise", counts[NoiseGaussian], records, cfg.GaussianNoiseProb)
			freq(t, "resize+sinc first", counts[OrderResizeSincJPEG], records, ResizeSincFirstProb)
			freq(t, "gray noise", grayChains, done, cfg.GrayNoiseProb)
		})
	}
}
