package degrade

import (
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/dp2osr/dp2o/internal/testutil"
	"github.com/dp2osr/dp2o/torch"
)

func testImage(t *testing.T, h, w int64) *torch.Tensor {
	x := torch.Unscope(torch.Rand([]int64{1, 3, h, w}, torch.MustGenerator(torch.CPU, 99), torch.Float32, torch.CPU))
	t.Cleanup(x.Close)
	return x
}

// TestApplyDeterministic: one (seed, image) pair always gives the same crop,
// record and LR; another seed gives another record.
func TestApplyDeterministic(t *testing.T) {
	testutil.NoLeak(t)
	for _, cfg := range []Config{Testing(), TrainFirstOrder()} {
		cfg.GTSize = 16 * cfg.SF
		img := testImage(t, int64(cfg.GTSize)+13, int64(cfg.GTSize)+7)
		run := func(seed uint64) ([]byte, []byte, Record) {
			crop, lq, rec, err := cfg.Apply(img, seed)
			if err != nil {
				t.Fatal(err)
			}
			defer crop.Close()
			defer lq.Close()
			if got := crop.Shape(); got[2] != int64(cfg.GTSize) || got[3] != int64(cfg.GTSize) {
				t.Fatalf("crop shape %v", got)
			}
			if got := lq.Shape(); got[2] != int64(cfg.GTSize/cfg.SF) || got[3] != int64(cfg.GTSize/cfg.SF) {
				t.Fatalf("lq shape %v", got)
			}
			u8 := ToUint8(lq)
			defer u8.Close()
			return crop.Bytes(), u8.Bytes(), rec
		}
		c1, l1, r1 := run(7)
		c2, l2, r2 := run(7)
		if string(c1) != string(c2) || string(l1) != string(l2) || !reflect.DeepEqual(r1, r2) {
			t.Fatalf("%s: seed 7 gave two different results", cfg.Name)
		}
		_, _, r3 := run(8)
		if reflect.DeepEqual(r1, r3) {
			t.Fatalf("%s: seeds 7 and 8 gave the same record", cfg.Name)
		}
		if r1.Seed == nil || *r1.Seed != 7 {
			t.Fatalf("record seed %v", r1.Seed)
		}
	}
}

// TestRecordReplay: the chain is a pure function of the record and the
// generator state — a completed record saved as JSON, loaded back and run
// on a generator in the same state gives the same LR.
func TestRecordReplay(t *testing.T) {
	testutil.NoLeak(t)
	cfg := Testing()
	cfg.GTSize = 0
	img := testImage(t, 48, 40)
	gen := torch.MustGenerator(torch.CPU, 3)
	rec, err := cfg.Sample(gen)
	if err != nil {
		t.Fatal(err)
	}
	state := torch.Unscope(gen.State())
	defer state.Close()
	lq, done, err := Degrade(img, rec, gen, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer lq.Close()
	b, err := json.Marshal(done)
	if err != nil {
		t.Fatal(err)
	}
	var back Record
	if err := json.Unmarshal(b, &back); err != nil {
		t.Fatal(err)
	}
	gen2 := torch.MustGenerator(torch.CPU, 0)
	if err := gen2.SetState(state); err != nil {
		t.Fatal(err)
	}
	lq2, done2, err := Degrade(img, back, gen2, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer lq2.Close()
	testutil.AssertEqual(t, "replayed lq", lq2, lq)
	if !reflect.DeepEqual(done, done2) {
		t.Fatalf("replayed record differs:\n%+v\n%+v", done, done2)
	}
}

func TestCropPadsSmallImages(t *testing.T) {
	testutil.NoLeak(t)
	cfg := Testing()
	cfg.GTSize = 40
	img := testImage(t, 12, 30) // needs several reflection rounds in height
	gen := torch.MustGenerator(torch.CPU, 1)
	c, err := cfg.Crop(img, gen)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if got := c.Shape(); got[2] != 40 || got[3] != 40 {
		t.Fatalf("crop shape %v", got)
	}
}

func TestBadInput(t *testing.T) {
	testutil.NoLeak(t)
	cfg := Testing()
	gen := torch.MustGenerator(torch.CPU, 1)
	good, err := cfg.Sample(gen)
	if err != nil {
		t.Fatal(err)
	}
	img := testImage(t, 64, 64)
	s := torch.NewScope()
	defer s.Close()
	expectErr := func(name string, err error, want string) {
		t.Helper()
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Fatalf("%s: error %v, want one mentioning %q", name, err, want)
		}
	}
	degrade := func(x *torch.Tensor, r Record) error {
		lq, _, err := Degrade(x, r, gen, nil)
		if err == nil {
			lq.Close()
		}
		return err
	}
	expectErr("nil image", degrade(nil, good), "nil")
	expectErr("2-d image", degrade(img.View([]int64{3 * 64, 64}), good), "(1,3,H,W)")
	expectErr("float64 image", degrade(img.To(torch.Float64), good), "float32")
	expectErr("tiny image", degrade(testImage(t, 4, 4), good), "small")
	r := good
	r.Kernel1.Type = "box"
	expectErr("kernel type", degrade(img, r), "unknown kernel type")
	r = good
	r.Kernel1.Size = 4
	expectErr("even kernel", degrade(img, r), "odd")
	r = good
	r.Stage1.Resize.Mode = "lanczos"
	expectErr("mode", degrade(img, r), "unknown resize mode")
	r = good
	r.Final.JPEGRange = [2]float64{90, 120}
	expectErr("jpeg range", degrade(img, r), "jpeg range")
	r = good
	r.Stage1.Noise.Kind = "speckle"
	expectErr("noise", degrade(img, r), "noise kind")
	r = good
	r.SecondOrder.Applied = true
	expectErr("second order", degrade(img, r), "second degradation stage")

	bad := Testing()
	bad.SecondOrderProb = 0.5
	_, err = bad.Sample(gen)
	expectErr("second_order_prob", err, "first-order")
	bad = Testing()
	bad.KernelProb = bad.KernelProb[:2]
	expectErr("kernel_prob", bad.Validate(), "weights")
	_, err = Named("nope")
	expectErr("named", err, "unknown config")

	dir := t.TempDir()
	p := filepath.Join(dir, "c.json")
	os.WriteFile(p, []byte(`{"name": "train_first_order", "jpeg_range": [30, 95`), 0o644)
	_, err = LoadConfig(p)
	expectErr("truncated json", err, "unexpected end")
	os.WriteFile(p, []byte(`{"name": "train_first_order", "noise_range": [5, 1]}`), 0o644)
	_, err = LoadConfig(p)
	expectErr("bad range", err, "noise_range")
	os.WriteFile(p, []byte(`{"name": "train_first_order", "gt_size": 256}`), 0o644)
	c, err := LoadConfig(p)
	if err != nil || c.GTSize != 256 || c.BlurKernelSize != TrainFirstOrder().BlurKernelSize {
		t.Fatalf("LoadConfig override: %+v, %v", c, err)
	}

	// Low-level ops panic with a *torch.Error, which torch.Try turns into an error.
	err = torch.Try(func() { DiffJPEG(img, torch.FromSlice([]float32{90, 90}, 2), nil) })
	expectErr("jpeg quality count", err, "quality")
	err = torch.Try(func() { ResizeScale(img, 0, ModeArea) })
	expectErr("zero scale", err, "scale factor")
}
