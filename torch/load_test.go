package torch_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/dp2osr/dp2o/internal/testutil"
	"github.com/dp2osr/dp2o/torch"
	"github.com/dp2osr/dp2o/torch/nn"
)

func TestLoadPth(t *testing.T) {
	testutil.NoLeak(t)
	want := testutil.Tensors(t, testutil.Fixture(t, "torch/pth_expected.safetensors"))
	require.Len(t, want, 8)
	for _, file := range []string{"plain_state_dict.pth", "nested_model.pth", "nested_state_dict_module_prefix.pth"} {
		t.Run(file, func(t *testing.T) {
			src, err := nn.LoadPth(testutil.Fixture(t, "torch/"+file))
			require.NoError(t, err)
			defer src.Close()
			require.Len(t, src.Names(), len(want), "keys: %v", src.Names())
			for name, w := range want {
				shape, dt, ok := src.Meta(name)
				require.True(t, ok, "%s: no %s (have %v)", file, name, src.Names())
				require.Equal(t, w.Shape(), shape, name)
				require.Equal(t, w.DType(), dt, name)
				got, err := src.Load(name)
				require.NoError(t, err)
				testutil.AssertEqual(t, file+": "+name, got, w)
				require.True(t, got.IsContiguous())
				got.Close()
			}
			// The strided view was copied out, not aliased to shared.a.
			view := src["view.t"]
			view.Fill_(-1)
			require.NotContains(t, src["shared.a"].Float32s(), float32(-1))
			require.Equal(t, int64(5), src["bn.num_batches_tracked"].ItemInt())
		})
	}
}

func TestLoadShardedSafetensors(t *testing.T) {
	testutil.NoLeak(t)
	src, err := nn.OpenSafetensors(testutil.Fixture(t, "torch/sharded.safetensors.index.json"))
	require.NoError(t, err)
	defer src.Close()
	require.Equal(t, []string{"a.bias", "a.weight", "b.weight"}, src.Names())
	b := nn.NewBuilder(src, torch.Float32, torch.CPU)
	w := b.Sub("a").Get("weight", 4, 4)
	b.Sub("a").Get("bias", 4)
	bw := b.Sub("b").Get("weight", 2, 4)
	p, err := b.Finish()
	require.NoError(t, err)
	defer p.Close()
	require.Equal(t, torch.Float32, bw.DType(), "f16 converted to the builder's dtype")
	require.Equal(t, []int64{4, 4}, w.Shape())
}

func TestBadFilesGiveErrors(t *testing.T) {
	testutil.NoLeak(t)
	dir := testutil.Fixture(t, "torch/bad")
	entries, err := os.ReadDir(dir)
	require.NoError(t, err)
	require.GreaterOrEqual(t, len(entries), 10)
	marker := "/tmp/dp2o_malicious_marker"
	for _, e := range entries {
		path := filepath.Join(dir, e.Name())
		t.Run(e.Name(), func(t *testing.T) {
			var err error
			require.NotPanics(t, func() {
				if strings.HasSuffix(e.Name(), ".pth") {
					var m nn.MapSource
					m, err = nn.LoadPth(path)
					if err == nil {
						m.Close()
					}
					return
				}
				var s *nn.SafetensorsSource
				s, err = nn.OpenSafetensors(path)
				if err == nil {
					// A lazy reader may only notice at load time.
					for _, n := range s.Names() {
						var x *torch.Tensor
						if x, err = s.Load(n); err != nil {
							break
						}
						x.Close()
					}
					s.Close()
				}
			})
			require.Error(t, err, "%s must be refused", e.Name())
			t.Logf("%s: %v", e.Name(), err)
		})
	}
	_, statErr := os.Stat(marker)
	require.True(t, os.IsNotExist(statErr), "malicious.pth ran code")
	// A missing file is an error too.
	_, err = nn.OpenSafetensors(filepath.Join(dir, "does-not-exist.safetensors"))
	require.Error(t, err)
	_, err = nn.LoadPth(filepath.Join(dir, "does-not-exist.pth"))
	require.Error(t, err)
}

// requireTorchError runs f and checks that it failed with a *torch.Error
// whose message contains each of msgs.
func requireTorchError(t *testing.T, f func(), msgs ...string) *torch.Error {
	t.Helper()
	err := torch.Try(f)
	require.Error(t, err)
	var te *torch.Error
	require.ErrorAs(t, err, &te)
	for _, m := range msgs {
		require.Contains(t, te.Msg, m)
	}
	require.NotContains(t, te.Msg, "Exception raised from", "backtrace leaked into the message")
	t.Logf("%v", err)
	return te
}

func TestOpErrors(t *testing.T) {
	testutil.NoLeak(t)
	s := torch.NewScope()
	defer s.Close()
	a := torch.Ones([]int64{2, 3}, torch.Float32, torch.CPU)
	b := torch.Ones([]int64{4, 5}, torch.Float32, torch.CPU)
	x := torch.Ones([]int64{1, 3, 8, 8}, torch.Float32, torch.CPU)
	w := torch.Ones([]int64{4, 5, 3, 3}, torch.Float32, torch.CPU)
	ints := torch.Ones([]int64{3, 2}, torch.Int64, torch.CPU)
	half := torch.Ones([]int64{3, 2}, torch.Float16, torch.CPU)
	live := torch.LiveTensors()

	e := requireTorchError(t, func() { a.Matmul(b) }, "mat1 and mat2 shapes cannot be multiplied (2x3 and 4x5)")
	require.Equal(t, "matmul", e.Op)

	requireTorchError(t, func() {
		torch.Conv2d(x, w, nil, []int64{1, 1}, []int64{0, 0}, []int64{1, 1}, 1)
	}, "expected input[1, 3, 8, 8] to have 5 channels, but got 3 channels instead")

	// libtorch 1.13 and 2.x word the dtype mismatch differently.
	dtypeMsg := func(e *torch.Error) {
		require.True(t, strings.Contains(e.Msg, "expected scalar type Float but found") ||
			strings.Contains(e.Msg, "expected m1 and m2 to have the same dtype"), "dtype mismatch message: %s", e.Msg)
	}
	dtypeMsg(requireTorchError(t, func() { a.Matmul(ints) }))
	dtypeMsg(requireTorchError(t, func() { a.Matmul(half) }))

	requireTorchError(t, func() { a.Add(b) }, "must match the size")
	requireTorchError(t, func() { a.View([]int64{4}) }, "shape '[4]' is invalid for input of size 6")
	requireTorchError(t, func() { a.Select(0, 5) }, "out of range")
	requireTorchError(t, func() { torch.Cat([]*torch.Tensor{a, b}, 0) }, "Sizes of tensors must match")
	requireTorchError(t, func() { a.Item() }, "a Tensor with 6 elements cannot be converted to Scalar")
	requireTorchError(t, func() { a.Size(5) }, "out of range")
	requireTorchError(t, func() { torch.ToSlice[int64](a) }, "float32", "int64")
	require.Equal(t, live, torch.LiveTensors(), "a failed op must not leave handles")

	// Recover turns the panic into a returned error in a function.
	forward := func() (y *torch.Tensor, err error) {
		defer torch.Recover(&err)
		return a.Matmul(b), nil
	}
	y, err := forward()
	require.Nil(t, y)
	require.ErrorContains(t, err, "torch: matmul: mat1 and mat2 shapes cannot be multiplied")

	// Panics that are not *torch.Error are bugs and propagate.
	require.PanicsWithValue(t, "boom", func() { _ = torch.Try(func() { panic("boom") }) })
}

func TestDeviceErrors(t *testing.T) {
	testutil.NoLeak(t)
	if !torch.CUDAAvailable() {
		requireTorchError(t, func() { torch.Zeros([]int64{2}, torch.Float32, torch.CUDA(0)) })
		s := torch.NewScope()
		x := torch.Ones([]int64{2}, torch.Float32, torch.CPU)
		requireTorchError(t, func() { x.ToDevice(torch.CUDA(0)) })
		s.Close()
		_, err := torch.NewGenerator(torch.CUDA(0), 1)
		require.ErrorContains(t, err, "CUDA")
		require.Equal(t, 0, torch.CUDADeviceCount())
	} else {
		n := torch.CUDADeviceCount()
		requireTorchError(t, func() { torch.Zeros([]int64{2}, torch.Float32, torch.CUDA(n+3)) })
	}
	_, err := torch.ParseDevice("tpu")
	require.Error(t, err)
	_, err = torch.ParseDevice("cuda:x")
	require.Error(t, err)
	d, err := torch.ParseDevice("cuda:1")
	require.NoError(t, err)
	require.Equal(t, torch.CUDA(1), d)
	require.Equal(t, "cuda:1", d.String())
	require.Equal(t, "cpu", torch.CPU.String())
	require.NotEmpty(t, torch.Version())
}

func TestClosedTensorAndBadBytes(t *testing.T) {
	testutil.NoLeak(t)
	x := torch.Ones([]int64{2}, torch.Float32, torch.CPU)
	x.Close()
	x.Close() // idempotent
	require.True(t, x.Closed())
	requireTorchError(t, func() { x.AddScalar(1) }, "closed tensor")
	requireTorchError(t, func() { x.Shape() }, "closed tensor")
	requireTorchError(t, func() { x.Bytes() }, "closed tensor")
	y := torch.Ones([]int64{2}, torch.Float32, torch.CPU)
	defer y.Close()
	requireTorchError(t, func() { y.Add(x) }, "closed tensor")
	require.Equal(t, "Tensor(closed)", x.String())
	var n *torch.Tensor
	requireTorchError(t, func() { n.Neg() }, "nil tensor")
	n.Close()
	require.True(t, n.Closed())
	require.Equal(t, "Tensor(nil)", n.String())

	_, err := torch.FromBytes(make([]byte, 7), torch.Float32, []int64{2})
	require.ErrorContains(t, err, "7 bytes given")
	_, err = torch.FromBytes(make([]byte, 8), torch.Float32, []int64{-1})
	require.Error(t, err)
	_, err = torch.FromBytes(nil, torch.DType(99), []int64{0})
	require.Error(t, err)
	requireTorchError(t, func() { torch.FromSlice([]float32{1, 2, 3}, 2, 2) }, "12 bytes given")
	require.Contains(t, y.String(), "shape=[2]")
}
