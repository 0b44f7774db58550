// cuda.cpp: CUDA device helpers. Built with DP2O_CUDA when the selected
// libtorch ships libtorch_cuda; otherwise every helper reports that CUDA is
// not compiled in.
#include "shim.h"

#ifdef DP2O_CUDA
// Device properties come through ATen (libtorch_cuda), not the CUDA
// runtime: the shim then names no libcudart symbol, which a pip wheel ships
// only as libcudart.so.12 (no unversioned name to link with -lcudart).
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/cuda/CUDAFunctions.h>
#endif

extern "C" {

#ifdef DP2O_CUDA
dp2o_err dp2o_cuda_synchronize(int device) {
  DP2O_TRY
  c10::cuda::device_synchronize();
  (void)device;
  DP2O_CATCH
}

dp2o_err dp2o_cuda_empty_cache(void) {
  DP2O_TRY
  c10::cuda::CUDACachingAllocator::emptyCache();
  DP2O_CATCH
}

dp2o_err dp2o_cuda_memory(int device, int64_t *allocated, int64_t *peak, int64_t *reserved) {
  DP2O_TRY
  auto st = c10::cuda::CUDACachingAllocator::getDeviceStats(device);
  // Index 0 is StatType::AGGREGATE; the enum moved namespaces in libtorch 2.x.
  const size_t agg = 0;
  *allocated = st.allocated_bytes[agg].current;
  *peak = st.allocated_bytes[agg].peak;
  *reserved = st.reserved_bytes[agg].current;
  DP2O_CATCH
}

dp2o_err dp2o_cuda_reset_peak(int device) {
  DP2O_TRY
  c10::cuda::CUDACachingAllocator::resetPeakStats(device);
  DP2O_CATCH
}

dp2o_err dp2o_cuda_device_name(int device, char *buf, int n) {
  DP2O_TRY
  TORCH_CHECK(device >= 0 && device < static_cast<int>(c10::cuda::device_count()), "CUDA device ", device,
              " does not exist (", static_cast<int>(c10::cuda::device_count()), " visible)");
  const cudaDeviceProp *prop = at::cuda::getDeviceProperties(static_cast<c10::DeviceIndex>(device));
  std::snprintf(buf, n, "%s", prop->name);
  DP2O_CATCH
}
#else
static dp2o_err no_cuda() { return dp2o::dup_err("CUDA support is not compiled into this build of the dp2o shim (libtorch without libtorch_cuda)"); }
dp2o_err dp2o_cuda_synchronize(int) { return no_cuda(); }
dp2o_err dp2o_cuda_empty_cache(void) { return no_cuda(); }
dp2o_err dp2o_cuda_memory(int, int64_t *, int64_t *, int64_t *) { return no_cuda(); }
dp2o_err dp2o_cuda_reset_peak(int) { return no_cuda(); }
dp2o_err dp2o_cuda_device_name(int, char *, int) { return no_cuda(); }
#endif

}  // extern "C"
