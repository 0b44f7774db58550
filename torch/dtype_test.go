package torch_test

import (
	"encoding/binary"
	"encoding/json"
	"math"
	"math/rand/v2"
	"os"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/dp2osr/dp2o/internal/testutil"
	"github.com/dp2osr/dp2o/torch"
	"github.com/dp2osr/dp2o/torch/nn"
	"github.com/dp2osr/dp2o/torch/safetensors"
)

var allDTypes = []torch.DType{
	torch.Uint8, torch.Int8, torch.Int16, torch.Int32, torch.Int64,
	torch.Float16, torch.Float32, torch.Float64, torch.Bool, torch.BFloat16,
}

type dtypeCase struct {
	DType  string    `json:"dtype"`
	Shape  []int64   `json:"shape"`
	Values []float64 `json:"values"`
}

func TestDTypesFixture(t *testing.T) {
	testutil.NoLeak(t)
	raw, err := os.ReadFile(testutil.Fixture(t, "torch/dtypes.json"))
	require.NoError(t, err)
	var cases map[string]dtypeCase
	require.NoError(t, json.Unmarshal(raw, &cases))
	require.Len(t, cases, 12)

	path := testutil.Fixture(t, "torch/dtypes.safetensors")
	src, err := nn.OpenSafetensors(path)
	require.NoError(t, err)
	defer src.Close()
	f, err := safetensors.Open(path)
	require.NoError(t, err)
	defer f.Close()
	require.Equal(t, map[string]string{"format": "pt"}, f.Metadata())

	names := src.Names()
	require.Len(t, names, len(cases))
	for _, name := range names {
		c, ok := cases[name]
		require.True(t, ok, "dtypes.json has no %s", name)
		wantDT, err := torch.ParseDType(c.DType)
		require.NoError(t, err)

		shape, dt, ok := src.Meta(name)
		require.True(t, ok)
		require.Equal(t, wantDT, dt, name)
		require.Equal(t, c.Shape, shape, name)

		x, err := src.Load(name)
		require.NoError(t, err, name)
		require.Equal(t, wantDT, x.DType(), name)
		require.Equal(t, c.Shape, x.Shape(), name)
		require.Equal(t, torch.CPU, x.Device())
		if c.Values == nil {
			c.Values = []float64{}
		}
		require.Equal(t, c.Values, x.Float64s(), "%s: values", name)
		if len(c.Shape) == 0 {
			require.Equal(t, c.Values[0], x.Item())
		}

		// Bytes gives back exactly the file's bytes, and FromBytes of them
		// gives back the same tensor.
		fileBytes, err := f.Data(name)
		require.NoError(t, err)
		b := x.Bytes()
		require.Equal(t, len(fileBytes), len(b))
		if len(b) > 0 {
			require.Equal(t, fileBytes, b, name)
		}
		y, err := torch.FromBytes(b, dt, shape)
		require.NoError(t, err)
		testutil.AssertEqual(t, name+" round trip", y, x)

		// Every dtype and back: values that survive the trip survive exactly.
		for _, to := range allDTypes {
			z := x.To(to)
			require.Equal(t, to, z.DType())
			require.Equal(t, c.Shape, z.Shape())
			if representable(c.Values, to) {
				require.Equal(t, c.Values, z.Float64s(), "%s → %v", name, to)
				back := z.To(dt)
				testutil.AssertEqual(t, name+" → "+to.String()+" → back", back, x)
				back.Close()
			}
			z.Close()
		}
		x.Close()
		y.Close()
	}
}

var intRange = map[torch.DType][2]float64{
	torch.Uint8: {0, 255}, torch.Int8: {-128, 127}, torch.Int16: {-32768, 32767},
	torch.Int32: {math.MinInt32, math.MaxInt32}, torch.Int64: {-1 << 53, 1 << 53},
}

// representable reports whether every value survives a conversion to d
// unchanged.
func representable(vs []float64, d torch.DType) bool {
	for _, v := range vs {
		switch d {
		case torch.Bool:
			if v != 0 && v != 1 {
				return false
			}
		case torch.Uint8, torch.Int8, torch.Int16, torch.Int32, torch.Int64:
			r := intRange[d]
			lo, hi := r[0], r[1]
			if v != math.Trunc(v) || v < lo || v > hi {
				return false
			}
		case torch.Float16:
			if float64(f16ToF32(refF16(float32(v)))) != v {
				return false
			}
		case torch.BFloat16:
			if float64(torch.BFloat16ToFloat32(refBF16(float32(v)))) != v {
				return false
			}
		case torch.Float32:
			if float64(float32(v)) != v {
				return false
			}
		}
	}
	return true
}

func TestDTypeConversionMatrix(t *testing.T) {
	testutil.NoLeak(t)
	s := torch.NewScope()
	defer s.Close()
	vals := []float64{0, 1, 2, 3, 4, 5, 127, 1, 0}
	src := torch.FromSlice(vals)
	for _, from := range allDTypes {
		x := src.To(from)
		want := vals
		if from == torch.Bool {
			want = []float64{0, 1, 1, 1, 1, 1, 1, 1, 0}
		}
		require.Equal(t, want, x.Float64s(), "to %v", from)
		for _, to := range allDTypes {
			w := want
			if to == torch.Bool {
				w = []float64{0, 1, 1, 1, 1, 1, 1, 1, 0}
			}
			require.Equal(t, w, x.To(to).Float64s(), "%v → %v", from, to)
		}
	}
	// Float to integer truncates toward zero, as in C++ (and PyTorch).
	f := torch.FromSlice([]float32{-2.7, -0.5, 0.5, 2.7, 100.99})
	require.Equal(t, []int64{-2, 0, 0, 2, 100}, f.To(torch.Int64).Int64s())
	require.Equal(t, []int32{-2, 0, 0, 2, 100}, torch.ToSlice[int32](f.To(torch.Int32)))
	require.Equal(t, []bool{true, true, true, true, true}, torch.ToSlice[bool](f.To(torch.Bool)))

	for _, d := range allDTypes {
		require.Equal(t, d, mustParse(t, d.String()))
		back, err := torch.DTypeFromSafetensors(d.SafetensorsCode())
		require.NoError(t, err)
		require.Equal(t, d, back)
		require.Equal(t, safetensors.DType(d.SafetensorsCode()).Size(), d.Size())
	}
	_, err := torch.DTypeFromSafetensors("F99")
	require.Error(t, err)
	_, err = torch.ParseDType("float128")
	require.Error(t, err)
}

func mustParse(t *testing.T, s string) torch.DType {
	d, err := torch.ParseDType(s)
	require.NoError(t, err)
	return d
}

// refF16 is an independent float32 → IEEE half conversion (round to nearest
// even, overflow to ±Inf, subnormals, NaN kept a NaN).
func refF16(f float32) uint16 {
	b := math.Float32bits(f)
	sign := uint16(b>>16) & 0x8000
	exp := int32(b>>23) & 0xff
	man := b & 0x7fffff
	if exp == 0xff {
		if man != 0 {
			return sign | 0x7e00
		}
		return sign | 0x7c00
	}
	e := exp - 127 + 15
	if e >= 0x1f {
		return sign | 0x7c00
	}
	if e <= 0 {
		if e < -10 {
			return sign
		}
		m := man | 0x800000
		shift := uint32(14 - e)
		h := m >> shift
		rem := m & (1<<shift - 1)
		half := uint32(1) << (shift - 1)
		if rem > half || (rem == half && h&1 == 1) {
			h++
		}
		return sign | uint16(h)
	}
	h := uint32(e)<<10 | man>>13
	rem := man & 0x1fff
	if rem > 0x1000 || (rem == 0x1000 && h&1 == 1) {
		h++ // may carry into the exponent, up to Inf: still correct
	}
	return sign | uint16(h)
}

func f16ToF32(h uint16) float32 {
	sign := uint32(h&0x8000) << 16
	exp := uint32(h>>10) & 0x1f
	man := uint32(h & 0x3ff)
	switch {
	case exp == 0x1f:
		return math.Float32frombits(sign | 0x7f800000 | man<<13)
	case exp == 0:
		v := float32(man) / (1 << 24)
		if sign != 0 {
			v = -v
		}
		return v
	}
	return math.Float32frombits(sign | (exp+127-15)<<23 | man<<13)
}

// refBF16 is float32 → bfloat16 with round to nearest even (c10's rule).
func refBF16(f float32) uint16 {
	if f != f {
		return 0x7fc0
	}
	b := math.Float32bits(f)
	b += 0x7fff + (b>>16)&1
	return uint16(b >> 16)
}

func TestHalfPrecisionConversions(t *testing.T) {
	testutil.NoLeak(t)
	s := torch.NewScope()
	defer s.Close()
	r := rand.New(rand.NewPCG(1, 2))
	vals := []float32{0, -0.0, 1, -1, 0.1, 65504, 65519.99, 65520, 1e6, -1e6, 6.1e-5, 5.96e-8, 2.98e-8, 1e-9,
		float32(math.Inf(1)), float32(math.Inf(-1)), 1.00048828125, 1.0009765625 + 0.00048828125, 3.3895314e38}
	for range 2000 {
		vals = append(vals, float32(r.NormFloat64()*math.Pow(10, float64(r.IntN(12)-6))))
	}
	for range 500 {
		vals = append(vals, math.Float32frombits(r.Uint32()&^0x7f800000|uint32(r.IntN(0xff))<<23))
	}
	x := torch.FromSlice(vals)

	h := x.To(torch.Float16)
	hb := h.Bytes()
	for i, v := range vals {
		got := binary.LittleEndian.Uint16(hb[2*i:])
		require.Equal(t, refF16(v), got, "float16(%g)", v)
	}
	require.Equal(t, refF16(0.1), torch.Float16Bits(0.1))
	// Widening is exact.
	wide := h.Float32s()
	for i := range vals {
		require.Equal(t, f16ToF32(binary.LittleEndian.Uint16(hb[2*i:])), wide[i])
	}

	bf := x.To(torch.BFloat16)
	bb := bf.Bytes()
	wide = bf.Float32s()
	for i, v := range vals {
		got := binary.LittleEndian.Uint16(bb[2*i:])
		require.Equal(t, refBF16(v), got, "bfloat16(%g)", v)
		require.Equal(t, torch.BFloat16ToFloat32(got), wide[i])
	}

	// Arithmetic in half precision stays in half precision.
	sum := h.Add(h)
	require.Equal(t, torch.Float16, sum.DType())
	require.Equal(t, torch.BFloat16, bf.MulScalar(2).DType())
	// Mixed half/float32 promotes to float32, as in PyTorch.
	require.Equal(t, torch.Float32, h.Add(x).DType())
}

func TestFromBytesAndSlices(t *testing.T) {
	testutil.NoLeak(t)
	s := torch.NewScope()
	defer s.Close()
	x := torch.FromSlice([]float32{1, 2, 3, 4, 5, 6}, 2, 3)
	require.Equal(t, []int64{2, 3}, x.Shape())
	require.Equal(t, []int64{3, 1}, x.Strides())
	require.Equal(t, int64(6), x.Numel())
	require.Equal(t, 2, x.Dim())
	require.Equal(t, int64(3), x.Size(-1))
	require.True(t, x.IsContiguous())
	tr := x.Transpose(0, 1)
	require.False(t, tr.IsContiguous())
	require.Equal(t, []float32{1, 4, 2, 5, 3, 6}, tr.Float32s(), "Bytes of a view are row-major")

	for _, d := range allDTypes {
		b := make([]byte, 6*d.Size())
		y, err := torch.FromBytes(b, d, []int64{2, 3})
		require.NoError(t, err, "%v", d)
		require.Equal(t, d, y.DType())
		require.Equal(t, b, y.Bytes())
		y.Close()
	}
	require.Equal(t, []int64{-1, 7}, torch.FromSlice([]int64{-1, 7}).Int64s())
	require.Equal(t, []uint8{1, 255}, torch.ToSlice[uint8](torch.FromSlice([]uint8{1, 255})))
	require.Equal(t, []int16{-300, 300}, torch.ToSlice[int16](torch.FromSlice([]int16{-300, 300})))
	require.Equal(t, []bool{true, false}, torch.ToSlice[bool](torch.FromSlice([]bool{true, false})))
	require.Equal(t, []float64{0.1}, torch.FromSlice([]float64{0.1}).Float64s())
	require.Equal(t, int64(-5), torch.ScalarOf(-5, torch.Int64, torch.CPU).ItemInt())
	require.Equal(t, 0, torch.Scalar(2).Dim())
}
