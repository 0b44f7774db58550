#!/usr/bin/env bash
# Compiles every shim source (torch/csrc/*.cpp) against the headers of a
# libtorch 2.x, to check the code paths this machine's libtorch 1.13 never
# builds: TORCH_VERSION_MAJOR >= 2 (native SDPA, per-device autocast, the
# 2.x c10d API) with c10d and Gloo. Linking and running need the 2.x
# libraries themselves (a CUDA wheel's torch on a GPU machine:
# scripts/gpu-check.sh builds and runs everything there).
#
#   scripts/check-libtorch2.sh                 # Debian trixie's libtorch-dev headers
#   LIBTORCH_INCLUDE=/path/include scripts/check-libtorch2.sh
#
# Without LIBTORCH_INCLUDE it downloads Debian's libtorch-dev package
# (LIBTORCH_DEB, default 2.6.0+dfsg-7 from trixie) and unpacks its headers
# into a temporary folder; nothing is installed.
set -euo pipefail
cd "$(dirname "$0")/.."
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
inc=${LIBTORCH_INCLUDE:-}
if [ -z "$inc" ]; then
  deb=${LIBTORCH_DEB:-http://deb.debian.org/debian/pool/main/p/pytorch/libtorch-dev_2.6.0+dfsg-7_amd64.deb}
  echo "== headers from $deb"
  curl -fsSL -o "$tmp/libtorch-dev.deb" "$deb"
  dpkg-deb -x "$tmp/libtorch-dev.deb" "$tmp/root"
  inc=$tmp/root/usr/include
fi
flags=(-std=c++17 -fsyntax-only -Wall -Wno-unused-variable -isystem "$inc" -isystem "$inc/torch/csrc/api/include")
version=$(echo '#include <torch/version.h>' | g++ "${flags[@]/-fsyntax-only/-E}" -dM -x c++ - |
  awk '/define TORCH_VERSION_MAJOR /{a=$3} /define TORCH_VERSION_MINOR /{b=$3} /define TORCH_VERSION_PATCH /{c=$3} END{print a "." b "." c}')
echo "== libtorch $version headers: compiling $(ls torch/csrc/*.cpp | wc -l) shim sources"
backends=$(g++ "${flags[@]/-fsyntax-only/-E}" -dM torch/csrc/dist.cpp | awk '/define DP2O_(C10D|GLOO|NCCL) /{print $2}' | tr '\n' ' ')
echo "distributed: ${backends:-none}"
fail=0
for f in torch/csrc/*.cpp; do
  if ! g++ "${flags[@]}" "$f" 2>"$tmp/err"; then
    echo "FAIL $f"; head -30 "$tmp/err"; fail=1
  fi
done
[ "$fail" -eq 0 ] && echo "check-libtorch2: every shim source compiles against libtorch $version"
exit "$fail"
