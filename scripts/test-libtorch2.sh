#!/usr/bin/env bash
# Runs the whole test suite against libtorch 2.x on the CPU: Debian trixie's
# libtorch-dev 2.6 (built with g++ 14, Gloo, no libuv, Vulkan kernels
# registered) in a trixie chroot, with this machine's Go toolchain and module
# cache bound in. It tests the committed HEAD (a clone of it), with the
# fixtures of $DP2O_FIXTURES (default ../shared/fixtures).
#
#   sudo scripts/test-libtorch2.sh [go test flags and packages, default ./...]
#
# Needs root (debootstrap, chroot, bind mounts) and Debian's archive; the
# chroot is kept in $TRIXIE_ROOT (default /var/tmp/dp2o-trixie, about 1.5 GB
# once libtorch is in) so that a second run starts at the build. The first
# run takes about 5 minutes more than the tests themselves.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
root=${TRIXIE_ROOT:-/var/tmp/dp2o-trixie}
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
fixtures=$(realpath "${DP2O_FIXTURES:-../shared/fixtures}")
goroot=$(go env GOROOT)
modcache=$(go env GOMODCACHE)
[ "$(id -u)" -eq 0 ] || { echo "test-libtorch2: needs root (debootstrap, chroot, mounts)"; exit 1; }
[ -d "$fixtures" ] || { echo "test-libtorch2: no fixtures at $fixtures (set DP2O_FIXTURES)"; exit 1; }
command -v debootstrap >/dev/null || apt-get install -y -qq debootstrap >/dev/null

if [ ! -x "$root/usr/bin/g++" ] || [ ! -e "$root/usr/include/torch/version.h" ]; then
  echo "== trixie chroot in $root"
  [ -e "$root/etc/debian_version" ] || debootstrap --variant=minbase trixie "$root" "$mirror" >"$root.debootstrap.log" 2>&1 ||
    { tail -20 "$root.debootstrap.log"; exit 1; }
  cp /etc/resolv.conf "$root/etc/resolv.conf"
  chroot "$root" sh -c 'apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    g++ make git ca-certificates libtorch-dev libgloo-dev libopenblas0-pthread >/tmp/apt.log 2>&1 || { tail -20 /tmp/apt.log; exit 1; }'
fi

mounts=()
bind() { # bind SRC DST: DST inside the chroot, unmounted on exit
  mkdir -p "$root$2"
  mount --bind "$1" "$root$2"
  mounts=("$root$2" "${mounts[@]}")
}
cleanup() { for m in "${mounts[@]}"; do umount -l "$m" 2>/dev/null || true; done; }
trap cleanup EXIT
mountpoint -q "$root/proc" || { mount -t proc proc "$root/proc"; mounts=("$root/proc" "${mounts[@]}"); }
bind /dev /dev
bind "$goroot" /opt/go
bind "$modcache" /opt/gomodcache
bind "$fixtures" /opt/fixtures
bind "$repo" /opt/src

echo "== $(chroot "$root" sh -c 'dpkg-query -W -f "libtorch-dev \${Version}, " libtorch-dev; g++ --version | head -1')"
args=("$@")
[ ${#args[@]} -gt 0 ] || args=(./...)
chroot "$root" env -i HOME=/root PATH=/opt/go/bin:/usr/bin:/bin GOMODCACHE=/opt/gomodcache GOFLAGS=-mod=mod \
  GOPROXY=off GOCACHE=/root/.cache/go-build DP2O_FIXTURES=/opt/fixtures bash -c '
  set -e
  rm -rf /root/dp2o && git clone -q /opt/src /root/dp2o && cd /root/dp2o
  echo "== $(git log --oneline -1)"
  make -s shim JOBS=$(nproc) -j$(nproc)
  go vet ./...
  go test -count=1 "$@"
' bash "${args[@]}"
