package torch

// #include "csrc/dp2o.h"
import "C"

import (
	"fmt"
	"strconv"
	"strings"
)

// DeviceType is c10::DeviceType.
type DeviceType int

// Device types.
const (
	DeviceCPU  DeviceType = 0
	DeviceCUDA DeviceType = 1
	DeviceMeta DeviceType = 14
)

// Device is where a tensor lives.
type Device struct {
	Type  DeviceType
	Index int
}

// CPU is the host device.
var CPU = Device{DeviceCPU, -1}

// Meta is the meta device: tensors with shapes and dtypes but no data, for
// building full-size models without allocating their weights.
var Meta = Device{DeviceMeta, -1}

// CUDA returns CUDA device n.
func CUDA(n int) Device { return Device{DeviceCUDA, n} }

// IsCUDA reports whether d is a CUDA device.
func (d Device) IsCUDA() bool { return d.Type == DeviceCUDA }

// String formats the device as PyTorch does ("cpu", "cuda:0").
func (d Device) String() string {
	switch d.Type {
	case DeviceCPU:
		return "cpu"
	case DeviceMeta:
		return "meta"
	case DeviceCUDA:
		if d.Index < 0 {
			return "cuda"
		}
		return fmt.Sprintf("cuda:%d", d.Index)
	}
	return fmt.Sprintf("device(%d:%d)", d.Type, d.Index)
}

// ParseDevice parses "cpu", "cuda" or "cuda:N". It does not check that the
// device exists; creating a tensor there does.
func ParseDevice(s string) (Device, error) {
	s = strings.TrimSpace(strings.ToLower(s))
	switch {
	case s == "cpu":
		return CPU, nil
	case s == "meta":
		return Meta, nil
	case s == "cuda" || s == "gpu":
		return CUDA(0), nil
	case strings.HasPrefix(s, "cuda:"):
		n, err := strconv.Atoi(s[5:])
		if err != nil || n < 0 {
			return Device{}, fmt.Errorf("torch: bad device %q", s)
		}
		return CUDA(n), nil
	}
	return Device{}, fmt.Errorf("torch: unknown device %q (want cpu, cuda or cuda:N)", s)
}

// CUDAAvailable reports whether libtorch sees a CUDA device.
func CUDAAvailable() bool { return C.dp2o_cuda_available() != 0 }

// CUDADeviceCount is the number of CUDA devices libtorch sees.
func CUDADeviceCount() int { return int(C.dp2o_cuda_device_count()) }

// CUDASynchronize waits for all work on device to finish.
func CUDASynchronize(device int) error {
	return errOf(C.dp2o_cuda_synchronize(C.int(device)), "cuda_synchronize")
}

// CUDAEmptyCache returns the caching allocator's unused blocks to the driver.
func CUDAEmptyCache() error { return errOf(C.dp2o_cuda_empty_cache(), "cuda_empty_cache") }

// CUDAMemory reports the bytes currently allocated by tensors, the peak since
// the last reset, and the bytes reserved by the caching allocator on device.
func CUDAMemory(device int) (allocated, peak, reserved int64, err error) {
	var a, p, r C.int64_t
	err = errOf(C.dp2o_cuda_memory(C.int(device), &a, &p, &r), "cuda_memory")
	return int64(a), int64(p), int64(r), err
}

// CUDAResetPeak resets the peak-allocation counter of device.
func CUDAResetPeak(device int) error {
	return errOf(C.dp2o_cuda_reset_peak(C.int(device)), "cuda_reset_peak")
}

// CUDADeviceName is the name of CUDA device n ("NVIDIA H100 80GB HBM3").
func CUDADeviceName(device int) (string, error) {
	buf := make([]byte, 256)
	if err := errOf(C.dp2o_cuda_device_name(C.int(device), (*C.char)(unsafePtr(buf)), C.int(len(buf))), "cuda_device_name"); err != nil {
		return "", err
	}
	return cstr(buf), nil
}

// Version is the libtorch version the shim was built against ("1.13.1").
func Version() string {
	buf := make([]byte, 64)
	if err := errOf(C.dp2o_version((*C.char)(unsafePtr(buf)), C.int(len(buf))), "version"); err != nil {
		return "unknown"
	}
	return cstr(buf)
}

// SetNumThreads sets libtorch's intra-op thread count.
func SetNumThreads(n int) { C.dp2o_set_num_threads(C.int(n)) }

// NumThreads is libtorch's intra-op thread count.
func NumThreads() int { return int(C.dp2o_get_num_threads()) }

// HasNativeSDPA reports whether attention uses libtorch's own fused
// scaled_dot_product_attention (libtorch 2.x) rather than the exact math path.
func HasNativeSDPA() bool { return C.dp2o_has_native_sdpa() != 0 }

// SetAllowTF32 chooses whether CUDA float32 convolutions (cuDNN) and matrix
// products (cuBLAS) may use TF32 tensor cores. PyTorch's defaults are
// cuDNN on, cuBLAS off; parity tests against float32 references turn both off.
func SetAllowTF32(cudnn, cublas bool) { C.dp2o_set_allow_tf32(cbool(cudnn), cbool(cublas)) }
