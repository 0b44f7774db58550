/* dist.h: the C ABI over libtorch's distributed engine (c10d) used by the Go
 * package torch/dist: rendezvous stores (TCPStore, FileStore), process
 * groups (Gloo on CPU, NCCL on CUDA where the libtorch has them) and the
 * collectives data-parallel training needs.
 *
 * Same conventions as dp2o.h: a dp2o_err is NULL on success or a malloc'd
 * message; handles are released with their _free function. Every collective
 * takes a timeout in milliseconds (<= 0: the group's) and returns an error,
 * never hangs, when a peer is gone. A group whose collective failed should be
 * freed: its peers are out of step.
 */
#ifndef DP2O_DIST_H
#define DP2O_DIST_H

#include "dp2o.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef void *dp2o_store;
typedef void *dp2o_group;

/* Backends compiled into this shim, comma-separated ("gloo", "gloo,nccl",
 * "" without c10d). */
void dp2o_dist_backends(char *buf, int n);

/* Stores. The TCP store's server runs in the process with is_server set
 * (rank 0), which waits up to timeout_ms for world_size clients; with
 * world_size 0 nobody waits (a launcher's store that outlives its workers). */
dp2o_err dp2o_dist_tcp_store(const char *host, int port, int is_server, int world_size, int64_t timeout_ms,
                             dp2o_store *out);
dp2o_err dp2o_dist_file_store(const char *path, int world_size, int64_t timeout_ms, dp2o_store *out);
dp2o_err dp2o_dist_store_set(dp2o_store s, const char *key, const void *data, int64_t n);
/* *out is malloc'd (free it); *n its length. Waits up to the store's timeout. */
dp2o_err dp2o_dist_store_get(dp2o_store s, const char *key, void **out, int64_t *n);
void dp2o_dist_store_free(dp2o_store s);

/* Process groups. backend: "gloo" or "nccl". prefix (may be empty) scopes
 * the group's keys in the store (a store shared with a launcher or an
 * earlier attempt). For Gloo, iface (a network interface name) or hostname
 * (an address of this host) picks the transport device; both empty: c10d's
 * default (the host name's address). device_index is the CUDA device of an
 * NCCL group. */
dp2o_err dp2o_dist_group_new(dp2o_store s, const char *prefix, const char *backend, int rank, int size,
                             int64_t timeout_ms, const char *iface, const char *hostname, int device_index,
                             dp2o_group *out);
void dp2o_dist_group_free(dp2o_group g);

/* op: 0 sum, 1 average (sum, then divide by the world size), 2 max, 3 min. */
dp2o_err dp2o_dist_all_reduce(dp2o_group g, dp2o_tensor *ts, int n, int op, int64_t timeout_ms);
dp2o_err dp2o_dist_broadcast(dp2o_group g, dp2o_tensor *ts, int n, int root, int64_t timeout_ms);
/* Gathers t from every rank into a new list of size tensors (*outs, malloc'd). */
dp2o_err dp2o_dist_all_gather(dp2o_group g, dp2o_tensor t, int64_t timeout_ms, dp2o_tensor **outs, int *n);
dp2o_err dp2o_dist_barrier(dp2o_group g, int64_t timeout_ms);

/* Data parallel. Tensors are flattened into buckets of at most bucket_bytes
 * (one tensor of half that or more is a bucket of its own, used in place),
 * each bucket one collective, with two buckets in flight at a time.
 * broadcast_coalesced copies root's values into ts in place (no grad);
 * average_gradients replaces each parameter's .grad by its mean over the
 * ranks. A parameter without a gradient on some ranks gets a zero one
 * there, as long as one rank has one; one without a gradient on every rank
 * is left without. failed says this rank's step failed: every rank then
 * returns an error after the first (small) collective, averaging nothing. */
dp2o_err dp2o_dist_broadcast_coalesced(dp2o_group g, dp2o_tensor *ts, int n, int root, int64_t bucket_bytes,
                                       int64_t timeout_ms);
dp2o_err dp2o_dist_average_gradients(dp2o_group g, dp2o_tensor *params, int n, int64_t bucket_bytes,
                                     int64_t timeout_ms, int failed, int *buckets);

/* Gradient averaging overlapped with the backward pass, as DDP's reducer:
 * a hook after each parameter's gradient accumulation marks it ready, and
 * a bucket (parameters in reverse order, then in the order rank 0 saw the
 * gradients come in the first step; at most bucket_bytes) starts its
 * all-reduce as soon as all its gradients are ready, buckets always in index
 * order on every rank. The gradients are views of the buckets' buffers. prepare(sync) arms it for the next backward pass
 * (sync 0: the hooks do nothing, as in the first micro-batches of an
 * accumulated step); finish, after that backward, starts the buckets not
 * yet started, waits for all of them and writes the means into the
 * parameters' .grad. A parameter without a gradient on any rank is left
 * without; one without a gradient in the rank's last synchronised pass no
 * longer holds its bucket back; a gradient accumulated after its bucket
 * started is averaged at finish and added; a failure on one rank fails
 * finish on every rank (see reducer.go). */
typedef void *dp2o_reducer;
dp2o_err dp2o_dist_reducer_new(dp2o_group g, dp2o_tensor *params, int n, int64_t bucket_bytes, dp2o_reducer *out,
                               int *buckets);
/* timeout_ms: the hooks' collectives and waits until the next prepare (<= 0: the group's). */
dp2o_err dp2o_dist_reducer_prepare(dp2o_reducer r, int sync, int64_t timeout_ms);
/* *overlapped: buckets whose all-reduce started while the backward pass
 * still had gradients to produce; *buckets: how many there are now (the
 * second step's first prepare rebuilds them in the order the first step's
 * gradients came). */
/* failed says this rank's step failed (abort): the step is closed with
 * the other ranks and fails on every rank. */
dp2o_err dp2o_dist_reducer_finish(dp2o_reducer r, int64_t timeout_ms, int failed, int *overlapped, int *buckets);
/* Sharded gradients (ZeRO stage 2): owner[i] is parameter i's rank. From
 * the next step every backward pass reduces each bucket (one owner's
 * parameters) to its owner only, buffers live only while their bucket is
 * filled and reduced, and finish leaves each owned parameter's mean in its
 * .grad and none elsewhere (see reducer.go). Between steps only. */
dp2o_err dp2o_dist_reducer_shard(dp2o_reducer r, const int *owner, int n, int *buckets);
/* *out: sharded, the most bucket buffers held at once in the open or last
 * step (the owners' sums not counted). */
dp2o_err dp2o_dist_reducer_peak_buffers(dp2o_reducer r, int *out);
void dp2o_dist_reducer_free(dp2o_reducer r);

#ifdef __cplusplus
}
#endif

#endif
