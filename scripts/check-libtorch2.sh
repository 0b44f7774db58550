#!/usr/bin/env bash
# Compiles every shim source (torch/csrc/*.cpp) against a libtorch 2.x, to
# check the code paths this machine's libtorch 1.13 never builds:
# TORCH_VERSION_MAJOR >= 2 (native SDPA, per-device autocast, the 2.x c10d
# API) with c10d and Gloo, and with --cuda the CUDA build with its NCCL
# backend. Running needs a GPU machine (scripts/gpu-check.sh builds and runs
# everything there).
#
#   scripts/check-libtorch2.sh          # Debian trixie's libtorch-dev headers (CPU), syntax only
#   scripts/check-libtorch2.sh --cuda   # trixie's CUDA libtorch (contrib), CUDA and NCCL headers:
#                                       # requires the NCCL backend to be compiled in, then runs
#                                       # `make shim` on a pip wheel's layout (one include folder per
#                                       # nvidia-* package): every source compiles with DP2O_CUDA and
#                                       # the shim links against libtorch_cuda with -z defs; about
#                                       # 1.5 GB of packages and two minutes on two cores
#   LIBTORCH_INCLUDE=/path/include scripts/check-libtorch2.sh
#
# Packages come from Debian's archive (DEBIAN_MIRROR, suite DEBIAN_SUITE,
# default trixie), found through its package index, and are unpacked into a
# temporary folder; nothing is installed.
set -euo pipefail
cd "$(dirname "$0")/.."
cuda=0
[ "${1:-}" = "--cuda" ] && cuda=1
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
suite=${DEBIAN_SUITE:-trixie}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
root=$tmp/root
mkdir -p "$root"

# fetch COMPONENT PACKAGE PATTERN: downloads PACKAGE's .deb as the suite's
# index names it and unpacks the members matching PATTERN into $root.
fetch() {
  local comp=$1 pkg=$2 pattern=$3 index=$tmp/Packages-$1 file
  [ -s "$index" ] || curl -fsSL "$mirror/dists/$suite/$comp/binary-amd64/Packages.xz" | xz -dc >"$index"
  file=$(awk -v p="$pkg" '/^Package: /{n=$2} /^Filename: /{if (n == p) {print $2; exit}}' "$index")
  [ -n "$file" ] || { echo "no package $pkg in $suite/$comp" >&2; exit 1; }
  echo "== $file"
  curl -fsSL -o "$tmp/pkg.deb" "$mirror/$file"
  dpkg-deb --fsys-tarfile "$tmp/pkg.deb" | tar -x -C "$root" --wildcards "$pattern"
  if [ "$pkg" = nvidia-cuda-dev ]; then mv "$tmp/pkg.deb" "$tmp/$pkg.deb"; else rm -f "$tmp/pkg.deb"; fi
}

inc=${LIBTORCH_INCLUDE:-}
defs=()
if [ "$cuda" -eq 1 ]; then
  fetch contrib libtorch-cuda-dev './usr/include/*'
  fetch contrib libtorch-cuda-2.6 './usr/lib/*'
  fetch contrib libnccl-dev './usr/include/*'
  fetch non-free nvidia-cuda-dev './usr/include/*'
  fetch main libcu++-dev './usr/include/*'
  inc=$root/usr/include
  defs=(-DDP2O_CUDA)
elif [ -z "$inc" ]; then
  fetch main libtorch-dev './usr/include/*'
  inc=$root/usr/include
fi
flags=(-std=c++17 -Wall -Wno-unused-variable "${defs[@]}" -isystem "$inc" -isystem "$inc/torch/csrc/api/include")
version=$(echo '#include <torch/version.h>' | g++ "${flags[@]}" -E -dM -x c++ - |
  awk '/define TORCH_VERSION_MAJOR /{a=$3} /define TORCH_VERSION_MINOR /{b=$3} /define TORCH_VERSION_PATCH /{c=$3} END{print a "." b "." c}')
backends=$(g++ "${flags[@]}" -E -dM torch/csrc/dist.cpp | awk '/define DP2O_(C10D|GLOO|NCCL) /{print $2}' | tr '\n' ' ')
echo "== libtorch $version headers${defs:+ (CUDA)}: compiling $(ls torch/csrc/*.cpp | wc -l) shim sources"
echo "distributed: ${backends:-none}"
if [ "$cuda" -eq 1 ] && [[ " $backends " != *" DP2O_NCCL "* ]]; then
  echo "FAIL: the CUDA build did not compile the NCCL backend in (torch/csrc/dist.cpp)"; exit 1
fi

fail=0
if [ "$cuda" -eq 1 ]; then
  # The layout of a pip wheel of torch, which a GPU machine's Python has:
  # torch/include and torch/lib, and beside torch one nvidia/<package>/include
  # per CUDA wheel (cuda_runtime, cublas, cusparse, cusolver, nccl, the CCCL
  # headers, ...). Then the repository's own build line: `make shim` with
  # LIBTORCH pointing there (CUDA flags, link with -z defs).
  site=$tmp/site
  mkdir -p "$site/torch/include" "$site/torch/lib"
  for d in ATen THC c10 caffe2 kineto torch; do [ -e "$inc/$d" ] && ln -s "$inc/$d" "$site/torch/include/$d"; done
  lib=$root/usr/lib/x86_64-linux-gnu
  for l in c10 c10_cuda torch torch_cpu torch_cuda; do ln -s "$(ls "$lib"/lib$l.so.* | head -1)" "$site/torch/lib/lib$l.so"; done
  wheel() { # wheel NAME PATH...: the nvidia-NAME wheel's include folder holds PATHs
    local name=$1 f
    shift
    mkdir -p "$site/nvidia/$name/include"
    for f in "$@"; do [ -e "$f" ] && ln -s "$f" "$site/nvidia/$name/include/"; done
    return 0
  }
  wheel cublas "$inc"/cublas*.h
  wheel cusparse "$inc"/cusparse*.h
  wheel cusolver "$inc"/cusolver*.h
  wheel nccl "$inc"/nccl*.h
  wheel cuda_cccl "$inc"/nv "$inc"/cuda "$inc"/cub "$inc"/thrust
  wheel nvtx "$inc"/nvtx3
  # The rest of the toolkit's headers: the runtime's.
  rest=()
  for f in $(dpkg-deb -c "$tmp/nvidia-cuda-dev.deb" | awk '{print $6}' | sed -n 's|^\./usr/include/\([^/]*\).*|\1|p' | sort -u); do
    case $f in cublas* | cusparse* | cusolver* | nccl* | nv | cuda | cub | thrust | nvtx3) continue ;; esac
    rest+=("$inc/$f")
  done
  wheel cuda_runtime "${rest[@]}"
  echo "== make shim against a wheel layout: $(ls "$site/nvidia" | tr '\n' ' ')"
  if CXXFLAGS=-O0 make -s shim LIBTORCH="$site/torch" BUILD="$tmp/build" TORCH_CXX11_ABI=1 -j"$(nproc)" >"$tmp/make.log" 2>&1; then
    so=$tmp/build/libdp2otorch.so
    echo "linked: $(readelf -d "$so" | awk '/NEEDED/{gsub(/[][]/, "", $5); printf "%s ", $5}')"
    echo "NCCL symbols the shim names: $(nm -D --undefined-only "$so" | grep -c ProcessGroupNCCL)"
  else
    echo "FAIL: make shim"; grep -v 'needed by' "$tmp/make.log" | grep -E -A5 'error|undefined' | head -40; fail=1
  fi
else
  for f in torch/csrc/*.cpp; do
    if ! g++ "${flags[@]}" -fsyntax-only "$f" 2>"$tmp/err"; then
      echo "FAIL $f"; head -30 "$tmp/err"; fail=1
    fi
  done
fi
[ "$fail" -eq 0 ] && echo "check-libtorch2: every shim source compiles against libtorch $version${defs:+ with CUDA and NCCL, and the shim links against libtorch_cuda}"
exit "$fail"
