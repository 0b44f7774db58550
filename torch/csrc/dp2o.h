/* dp2o.h: the flat C ABI over libtorch used by the Go package torch.
 *
 * Every function that can fail returns a dp2o_err: NULL on success, or a
 * malloc'd message (the caller frees it with free()). C++ exceptions never
 * cross this boundary. Tensors are opaque handles owning one at::Tensor; they
 * are released with dp2o_tensor_free.
 */
#ifndef DP2O_H
#define DP2O_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* A tensor handle is the address of the shim's struct dp2o_owned, carried as
 * an integer: cgo checks every pointer argument of every call for Go
 * pointers (even a pointer to an opaque struct), and a handle, passed on
 * every op, never holds one. 0 is no tensor. */
struct dp2o_owned;
typedef uintptr_t dp2o_tensor;

/* dp2o_owned_head starts the object behind every handle, so that C and Go
 * can read it. deferrable is 1 for a handle whose freeing may wait for the
 * next shim call (a CPU tensor outside autograd whose storage is at most
 * DP2O_DEFERRED_MAX_BYTES); such a handle is freed by pushing it onto the
 * lock-free list at dp2o_deferred_list() (linked through next, pushed with
 * a compare-and-swap from any thread), which every fallible shim call, the
 * live counters and dp2o_drain_deferred empty first. */
typedef struct dp2o_owned_head {
  struct dp2o_owned *next;
  int32_t deferrable;
  int32_t reserved;
} dp2o_owned_head;
#define DP2O_DEFERRED_MAX_BYTES 65536
uintptr_t *dp2o_deferred_list(void);
void dp2o_drain_deferred(void);
typedef void *dp2o_gen;
typedef char *dp2o_err;

/* dp2o_result is what an op returning one tensor gives back by value: the
 * new handle, or NULL and the error. */
typedef struct {
  dp2o_tensor t;
  dp2o_err err;
} dp2o_result;

/* library and devices */
dp2o_err dp2o_version(char *buf, int n);
int dp2o_cuda_available(void);
int dp2o_cuda_device_count(void);
dp2o_err dp2o_cuda_synchronize(int device);
dp2o_err dp2o_cuda_empty_cache(void);
dp2o_err dp2o_cuda_memory(int device, int64_t *allocated, int64_t *peak, int64_t *reserved);
dp2o_err dp2o_cuda_reset_peak(int device);
dp2o_err dp2o_cuda_device_name(int device, char *buf, int n);
void dp2o_set_num_threads(int n);
int dp2o_get_num_threads(void);
int dp2o_has_native_sdpa(void);
void dp2o_set_allow_tf32(int cudnn, int cublas);

/* the caching CPU allocator (cpu_cache.cpp) */
void dp2o_cpu_cache_empty(void);
int dp2o_cpu_cache_stats(int64_t *cached, int64_t *hits, int64_t *misses);

/* live counters */
int64_t dp2o_live_tensors(void);
int64_t dp2o_live_bytes(void);

/* grad mode (thread-local in libtorch) */
int dp2o_grad_enabled(void);
void dp2o_set_grad_enabled(int on);

/* autocast (thread-local in libtorch), as torch.autocast(device_type, dtype) */
dp2o_err dp2o_autocast_enter(int device_type, int dtype, int *prev_enabled, int *prev_dtype);
dp2o_err dp2o_autocast_exit(int device_type, int prev_enabled, int prev_dtype);
int dp2o_autocast_enabled(int device_type);

/* tensor lifetime and metadata */
void dp2o_tensor_free(dp2o_tensor t);
void dp2o_tensor_free_many(const uintptr_t *ts, int64_t n); /* frees n handles in one call */
dp2o_err dp2o_tensor_from_data(const void *data, int64_t nbytes, const int64_t *shape, int ndim,
                               int dtype, dp2o_tensor *out);
dp2o_err dp2o_tensor_copy_to(dp2o_tensor t, void *dst, int64_t nbytes);
int dp2o_tensor_ndim(dp2o_tensor t);
void dp2o_tensor_shape(dp2o_tensor t, int64_t *dims);
void dp2o_tensor_strides(dp2o_tensor t, int64_t *dims);
int dp2o_tensor_dtype(dp2o_tensor t);
void dp2o_tensor_device(dp2o_tensor t, int *type, int *index);
int64_t dp2o_tensor_numel(dp2o_tensor t);
int dp2o_tensor_defined(dp2o_tensor t);
int dp2o_tensor_is_contiguous(dp2o_tensor t);
int dp2o_tensor_requires_grad(dp2o_tensor t);
int64_t dp2o_tensor_storage_offset(dp2o_tensor t);
dp2o_err dp2o_tensor_item(dp2o_tensor t, double *out);
dp2o_err dp2o_tensor_item_int(dp2o_tensor t, int64_t *out);
dp2o_err dp2o_tensor_to_string(dp2o_tensor t, char **out);
dp2o_err dp2o_tensor_shallow_clone(dp2o_tensor t, dp2o_tensor *out);

/* autograd */
dp2o_err dp2o_tensor_set_requires_grad(dp2o_tensor t, int on);
dp2o_err dp2o_tensor_backward(dp2o_tensor t, dp2o_tensor grad, int retain_graph);
dp2o_err dp2o_tensor_grad(dp2o_tensor t, dp2o_tensor *out); /* *out NULL when undefined */
dp2o_err dp2o_tensor_zero_grad(dp2o_tensor t, int set_to_none);
dp2o_err dp2o_tensor_set_grad(dp2o_tensor t, dp2o_tensor grad);

/* activation checkpointing (checkpoint.cpp): dp2o_checkpoint runs the
 * registered callback with the id under no_grad, keeps only the inputs for
 * the backward pass and runs the callback again there, under grad. The
 * callback reads its inputs with dp2o_ckpt_input (new handles), hands its
 * outputs over with dp2o_ckpt_add_output (copied; the handles stay the
 * caller's) and returns NULL or a malloc'd message. Ids whose autograd node
 * is gone are listed by dp2o_ckpt_released. */
typedef struct dp2o_ckpt_call {
  const void *inputs; /* std::vector<at::Tensor> */
  void *outputs;      /* std::vector<at::Tensor> */
} dp2o_ckpt_call;
typedef char *(*dp2o_ckpt_fn)(uint64_t id, dp2o_ckpt_call *call);
void dp2o_ckpt_set_callback(dp2o_ckpt_fn fn);
int dp2o_ckpt_released(uint64_t *ids, int max);
dp2o_err dp2o_checkpoint(uint64_t id, const dp2o_tensor *inputs, int n, dp2o_tensor *outputs, int max_out,
                         int *n_out);
int dp2o_ckpt_num_inputs(const dp2o_ckpt_call *c);
dp2o_tensor dp2o_ckpt_input(const dp2o_ckpt_call *c, int i);
void dp2o_ckpt_add_output(dp2o_ckpt_call *c, dp2o_tensor t);

/* generators */
dp2o_err dp2o_gen_new(int device_type, int device_index, uint64_t seed, dp2o_gen *out);
void dp2o_gen_free(dp2o_gen g);
dp2o_err dp2o_gen_manual_seed(dp2o_gen g, uint64_t seed);
dp2o_err dp2o_gen_seed(dp2o_gen g, uint64_t *out);
dp2o_err dp2o_gen_get_state(dp2o_gen g, dp2o_tensor *out);
dp2o_err dp2o_gen_set_state(dp2o_gen g, dp2o_tensor state);
dp2o_err dp2o_manual_seed(uint64_t seed);
/* benchmark reference loops (bench.cpp) */
dp2o_err dp2o_bench_aten_add(int64_t n, int mode, double *ns);
void dp2o_blas_library(char *buf, int n);
int dp2o_set_fast_paths(int on); /* per OS thread; returns the previous setting */
int64_t dp2o_set_attention_chunk_bytes(int64_t n); /* returns the previous bound */

#ifdef __cplusplus
}
#endif

#include "dp2o_ops.h"

#endif
