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
#                                       # compiles with DP2O_CUDA, requires the NCCL backend to be
#                                       # compiled in, and links the shim against libtorch_cuda with
#                                       # -z defs (every symbol it names must exist there); about
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
  rm -f "$tmp/pkg.deb"
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
mkdir -p "$tmp/obj"
if [ "$cuda" -eq 1 ]; then
  # Objects (at -O0: only the link matters), then the shim's own link line.
  ls torch/csrc/*.cpp | xargs -P "$(nproc)" -I{} sh -c \
    'g++ "$@" -O0 -fPIC -c {} -o '"$tmp"'/obj/$(basename {} .cpp).o 2>'"$tmp"'/obj/$(basename {} .cpp).err || { echo "FAIL {}"; head -30 '"$tmp"'/obj/$(basename {} .cpp).err; exit 1; }' \
    sh "${flags[@]}" || fail=1
  if [ "$fail" -eq 0 ]; then
    lib=$root/usr/lib/x86_64-linux-gnu
    for l in c10 c10_cuda torch torch_cpu torch_cuda; do ln -sf "$(basename "$(ls "$lib"/lib$l.so.* | head -1)")" "$lib/lib$l.so"; done
    # The CUDA runtime libraries libtorch_cuda needs are not fetched: ld's
    # warnings about them are expected; -z defs errors are not.
    if g++ -shared -Wl,-z,defs -o "$tmp/libdp2otorch.so" "$tmp"/obj/*.o -L"$lib" \
      -Wl,--no-as-needed -ltorch_cuda -lc10_cuda -ltorch -ltorch_cpu -lc10 -Wl,--as-needed 2>"$tmp/link.err"; then
      echo "linked: $(readelf -d "$tmp/libdp2otorch.so" | awk '/NEEDED/{gsub(/[][]/, "", $5); printf "%s ", $5}')"
      echo "NCCL symbols the shim names: $(nm -D --undefined-only "$tmp/libdp2otorch.so" | grep -c ProcessGroupNCCL)"
    else
      echo "FAIL: link"; grep -v 'needed by' "$tmp/link.err" | head -30; fail=1
    fi
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
