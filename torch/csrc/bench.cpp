// bench.cpp: the bare C++ reference loops of the per-op overhead benchmark
// (cmd/torchbench). They call ATen exactly as the shim's op wrappers do,
// without the C ABI, so that "binding overhead" can be measured as the time
// above them in the same process, on the same libtorch.
#include <time.h>

#include <cstdio>

#include <vector>

#include "shim.h"
#include "perf.h"

extern "C" {

// cpu_ns is the process's CPU time: the three sides of the benchmark count
// CPU time, not wall time, so that other load on the machine does not
// enter the figures.
static double cpu_ns() {
  struct timespec ts;
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) * 1e9 + static_cast<double>(ts.tv_nsec);
}

// dp2o_bench_aten_add times n calls of at::add on two 1×1 float32 tensors
// and stores the mean process CPU ns per call in *ns. mode 0 destroys each
// result at once (ATen alone); mode 1 wraps each in a dp2o handle and frees
// it at once (the C side of a Go op followed by Close); mode 2 frees the
// handles 1000 at a time, as a Go scope closed every 1000 ops does.
dp2o_err dp2o_bench_aten_add(int64_t n, int mode, double *ns) {
  DP2O_TRY
  at::Tensor x = at::ones({1, 1});
  at::Tensor y = at::ones({1, 1});
  double start = cpu_ns();
  if (mode == 2) {
    std::vector<uintptr_t> hs;
    hs.reserve(1000);
    for (int64_t i = 0; i < n; i++) {
      hs.push_back(reinterpret_cast<uintptr_t>(dp2o::wrap(at::add(x, y))));
      if (hs.size() == 1000) {
        dp2o_tensor_free_many(hs.data(), static_cast<int64_t>(hs.size()));
        hs.clear();
      }
    }
    dp2o_tensor_free_many(hs.data(), static_cast<int64_t>(hs.size()));
  } else if (mode == 1) {
    for (int64_t i = 0; i < n; i++) dp2o_tensor_free(dp2o::wrap(at::add(x, y)));
  } else {
    for (int64_t i = 0; i < n; i++) at::add(x, y);
  }
  *ns = (cpu_ns() - start) / static_cast<double>(n);
  DP2O_CATCH
}
}

extern "C" {

// dp2o_blas_library copies the path of the BLAS libtorch calls into buf
// (n bytes, NUL-terminated, truncated if longer).
void dp2o_blas_library(char *buf, int n) {
  if (n <= 0) return;
  std::snprintf(buf, static_cast<size_t>(n), "%s", dp2o::blas_library().c_str());
}
}
