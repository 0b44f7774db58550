#!/usr/bin/python3
"""Per-call overhead of PyTorch on the libtorch the Go binding links.

Run with Debian's python3-torch 1.13 (the same libtorch as the Go shim):

    /usr/bin/python3 scripts/bench_torch.py [--threads 1,2] [--repeat R]

It prints ns/op of process CPU time, the best of R repeats (timeit), for the cases of
cmd/torchbench: a 1×1 float32 add and a 2048×2048 float32 matmul, with one
intra-op thread and with the default thread count. Compare with
`go run ./cmd/torchbench` on the same machine.

With --shim (the Go binding's build/libdp2otorch.so, loaded with ctypes; it
links the same libtorch this torch imports), it also times the shim's bare
C++ loop of at::add in this process, taking turns with the Python runs, so
that Python's overhead above it is measured at the same moments
(cmd/torchbench does the same on its side).
"""
import ctypes
import argparse
import os
import time
import timeit

import torch


def best_ns(stmt, env, number, repeat):
    # Process CPU time, as cmd/torchbench counts it: other load on the
    # machine stays out of the figures. The statement is a string, as on
    # timeit's command line, so no Python function call is added per op.
    return min(timeit.repeat(stmt, globals=env, number=number, repeat=repeat, timer=time.process_time)) / number * 1e9


def bare_ns(shim, number):
    # The shim's C++ loop of at::add (mode 0: each result destroyed at
    # once) times itself in process CPU ns per op.
    ns = ctypes.c_double()
    err = shim.dp2o_bench_aten_add(ctypes.c_int64(number), ctypes.c_int(0), ctypes.byref(ns))
    if err:
        raise RuntimeError(ctypes.string_at(err).decode())
    return ns.value


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=7, help="timed runs of the small op (the best is reported)")
    ap.add_argument("--large-repeat", type=int, default=3, help="timed runs of the matmul (0: skip it)")
    ap.add_argument("--shim", default="", help="the Go binding's libdp2otorch.so: also time its bare C++ add loop here")
    ap.add_argument("--small-n", type=int, default=200000, help="adds per run")
    ap.add_argument("--large-n", type=int, default=1, help="matmuls per run")
    ap.add_argument("--size", type=int, default=2048, help="matrix side of the large matmul")
    ap.add_argument("--threads", default="", help="comma-separated thread counts (default: 1, torch's default, the CPU count)")
    args = ap.parse_args()

    shim = None
    if args.shim:
        shim = ctypes.CDLL(args.shim)
        shim.dp2o_bench_aten_add.restype = ctypes.c_void_p
    default_threads = torch.get_num_threads()
    print(f"torch {torch.__version__}, default threads {default_threads}")
    x, y = torch.ones(1, 1), torch.ones(1, 1)
    g = torch.Generator().manual_seed(0)
    a = torch.randn(args.size, args.size, generator=g)
    b = torch.randn(args.size, args.size, generator=g)
    if args.threads:
        thread_list = [int(t) for t in args.threads.split(",") if t.strip()]
    else:
        thread_list = sorted({1, default_threads, os.cpu_count() or 1})
    for threads in thread_list:
        torch.set_num_threads(threads)
        env = {"torch": torch, "x": x, "y": y, "a": a, "b": b}
        small, bare = float("inf"), float("inf")
        for _ in range(args.repeat):
            # One run of each per round, as cmd/torchbench takes turns.
            if shim is not None:
                bare = min(bare, bare_ns(shim, args.small_n))
            small = min(small, best_ns("x + y", env, args.small_n, 1))
        print(f"python threads={threads} AddSmall      {small:12.1f} ns/op")
        if shim is not None:
            print(f"python threads={threads} BareAdd       {bare:12.1f} ns/op")
        if args.large_repeat > 0:
            large = best_ns("torch.matmul(a, b)", env, args.large_n, args.large_repeat)
            print(f"python threads={threads} MatmulLarge   {large:12.1f} ns/op")


if __name__ == "__main__":
    main()
