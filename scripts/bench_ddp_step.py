#!/usr/bin/python3
"""The data-parallel step of torch/dist's BenchmarkReducerStep in PyTorch's
DistributedDataParallel, on the same libtorch (Debian's python3-torch 1.13).

A perceptron of DP2O_DIST_BENCH_LAYERS (8) square Linear + tanh layers of
width DP2O_DIST_BENCH_WIDTH (2048): 128 MiB of float32 weights, batch 32,
MSE against a random target, DDP with 25 MB buckets (bucket_cap_mb=25),
plain SGD (lr 1e-3), zero_grad(set_to_none=True); 2 Gloo processes
(DP2O_DIST_BENCH_WORLD) on localhost, one thread each. Run for
gradient_as_bucket_view False (DDP's default) and True. It prints rank 0's
time per step after a warm-up step and the largest growth of a rank's peak
resident set (VmHWM) above its resident set once the model and the data are
built, as the Go benchmark measures.

With --optim adamw the step uses AdamW (lr 1e-3, PyTorch's defaults) under
DDP with gradient_as_bucket_view=True, whole on each rank, then sharded by
torch.distributed.optim.ZeroRedundancyOptimizer (ZeRO stage 1), as
BenchmarkShardedStep does:

    /usr/bin/python3 scripts/bench_ddp_step.py --iters 5 --optim adamw
    go test ./torch/dist -run '^$' -bench ShardedStep -benchtime 5x

--accum N takes N backward passes per step (gradient accumulation, DDP's
no_sync for all but the last), as DP2O_DIST_BENCH_ACCUM=N does for the Go
benchmark. PyTorch itself has no ZeRO stage 2 beside FSDP's SHARD_GRAD_OP,
which does not import in Debian's 1.13 on Python 3.11. Both sides fix glibc's mmap threshold
(MALLOC_MMAP_THRESHOLD_, 131072 bytes), so that freed gradient-sized blocks leave the
resident set and VmHWM is the peak of live memory. That also makes every large block PyTorch's
CPU allocator takes fresh, page faults and all (dp2o's CPU tensor cache keeps its own):
DP2O_DIST_BENCH_MMAP_THRESHOLD=0 on both sides leaves glibc's default, what a user runs, for
the times.

    /usr/bin/python3 scripts/bench_ddp_step.py --iters 5
    go test ./torch/dist -run '^$' -bench ReducerStep -benchtime 5x
"""
import argparse
import contextlib
import math
import os
import socket
import subprocess
import sys
import time


def env_int(name, default):
    v = os.environ.get(name, "")
    return int(v) if v.isdigit() and int(v) > 0 else default


def proc_status():
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            fs = v.split()
            if len(fs) == 2 and fs[1] == "kB":
                out[k] = int(fs[0]) << 10
    return out


def worker(iters, mode):
    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    width, layers = env_int("DP2O_DIST_BENCH_WIDTH", 2048), env_int("DP2O_DIST_BENCH_LAYERS", 8)
    batch = 32
    gen = torch.Generator().manual_seed(1)
    mods = []
    for _ in range(layers):
        lin = torch.nn.Linear(width, width)
        with torch.no_grad():
            lin.weight.copy_(torch.randn(width, width, generator=gen) / math.sqrt(width))
            lin.bias.zero_()
        mods += [lin, torch.nn.Tanh()]
    model = torch.nn.Sequential(*mods)
    x = torch.randn(batch, width, generator=gen)
    y = torch.randn(batch, width, generator=gen)
    if mode == "copy" or mode == "view":
        opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    elif mode == "adamw":
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    else:
        from torch.distributed.optim import ZeroRedundancyOptimizer
        opt = ZeroRedundancyOptimizer(model.parameters(), optimizer_class=torch.optim.AdamW, lr=1e-3)
    before = proc_status()
    ddp = DDP(model, bucket_cap_mb=25, gradient_as_bucket_view=mode != "copy")

    accum = env_int("DP2O_DIST_BENCH_ACCUM", 1)

    def step():
        for m in range(accum):
            with ddp.no_sync() if m < accum - 1 else contextlib.nullcontext():
                loss = torch.nn.functional.mse_loss(ddp(x), y) / accum
                loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    step()  # warm-up
    start = time.perf_counter()
    for _ in range(iters):
        step()
    per = (time.perf_counter() - start) / iters
    after = proc_status()
    print(f"per step: {per:g} s, peak growth: {after['VmHWM'] - before['VmRSS']} bytes", flush=True)
    dist.destroy_process_group()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--optim", choices=["sgd", "adamw"], default="sgd")
    ap.add_argument("--worker", choices=["copy", "view", "adamw", "zero"])
    ap.add_argument("--accum", type=int, default=0, help="backward passes per step (DP2O_DIST_BENCH_ACCUM)")
    a = ap.parse_args()
    if a.accum > 0:
        os.environ["DP2O_DIST_BENCH_ACCUM"] = str(a.accum)
    if a.worker:
        worker(a.iters, a.worker)
        return
    world = env_int("DP2O_DIST_BENCH_WORLD", 2)
    threshold = int(os.environ.get("DP2O_DIST_BENCH_MMAP_THRESHOLD", "131072"))  # 0: glibc's default
    names = {"copy": "DDP gradient_as_bucket_view=False", "view": "DDP gradient_as_bucket_view=True",
             "adamw": "DDP + AdamW", "zero": "DDP + ZeroRedundancyOptimizer(AdamW)"}
    for mode in ("copy", "view") if a.optim == "sgd" else ("adamw", "zero"):
        port = free_port()
        procs = []
        for r in range(world):
            env = dict(os.environ, RANK=str(r), LOCAL_RANK=str(r), WORLD_SIZE=str(world),
                       MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), GLOO_SOCKET_IFNAME="lo",
                       OMP_NUM_THREADS="1")
            if threshold:
                env["MALLOC_MMAP_THRESHOLD_"] = str(threshold)
            else:
                env.pop("MALLOC_MMAP_THRESHOLD_", None)
            procs.append(subprocess.Popen([sys.executable, __file__, "--iters", str(a.iters), "--worker", mode],
                                          env=env, stdout=subprocess.PIPE, text=True))
        outs = [p.communicate()[0] for p in procs]
        if any(p.returncode for p in procs):
            sys.exit(f"{mode}: a rank failed:\n" + "\n".join(outs))
        sec = float(outs[0].split("per step: ")[1].split(" s")[0])
        peak = max(int(o.split("peak growth: ")[1].split(" bytes")[0]) for o in outs)
        print(f"{names[mode]}: {sec * 1e3:.1f} ms per step, peak {peak / 2**20:.1f} MiB")


if __name__ == "__main__":
    main()
