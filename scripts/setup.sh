#!/usr/bin/env bash
# Installs what a fresh Debian (bookworm) machine lacks to build and test
# dp2o: a C++ compiler and Debian's libtorch-dev (libtorch 1.13, CPU).
# Go itself must already be installed (go.dev/dl); nothing downloads weights.
set -euo pipefail
need=()
command -v g++ >/dev/null 2>&1 || need+=(g++)
command -v make >/dev/null 2>&1 || need+=(make)
if [ -z "${LIBTORCH:-}" ] && [ ! -f /usr/include/ATen/ATen.h ]; then need+=(libtorch-dev); fi
if [ ${#need[@]} -gt 0 ]; then
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}"
fi
command -v go >/dev/null 2>&1 || { echo "setup: Go is not installed (need Go >= 1.26)" >&2; exit 1; }
echo "setup: ok (g++ $(g++ -dumpversion), $(go version | cut -d' ' -f3), libtorch ${LIBTORCH:-system})"
