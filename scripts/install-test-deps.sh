#!/bin/bash
# Installs what the virtual-bare-metal tests (scripts/vbm.sh) need on a Debian 12 machine,
# from Debian's archive only, and downloads the newest Debian cloud kernel package into the
# test cache. Run as root (CI calls it before .ci/run's tests). Safe to run again.
set -euo pipefail

CACHE_DIR=${GAPPROBE_TEST_CACHE:-/var/cache/gapprobe-test}

die() { echo "install-test-deps: $*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || die "must run as root (apt-get install)"

export DEBIAN_FRONTEND=noninteractive
apt-get update
# qemu-system-x86: T itself; busybox-static: the shell of T and of test guests (must be
# static: it is /init); cpio: inspecting images; rt-tests: oslat baselines; xz-utils and
# zstd: compressed kernel modules in newer kernel packages.
apt-get install -y --no-install-recommends \
    qemu-system-x86 busybox-static cpio rt-tests xz-utils zstd coreutils

# The newest Debian cloud kernel: its image package (unsigned preferred: same kernel, no
# shim dependency). Version sort on the package names picks the newest ABI.
kernel_pkg=$(apt-cache search --names-only '^linux-image-[0-9.]+-[0-9]+-cloud-amd64-unsigned$' \
    | cut -d' ' -f1 | sort -V | tail -n1)
if [ -z "$kernel_pkg" ]; then
    kernel_pkg=$(apt-cache search --names-only '^linux-image-[0-9.]+-[0-9]+-cloud-amd64$' \
        | cut -d' ' -f1 | sort -V | tail -n1)
fi
[ -n "$kernel_pkg" ] || die "no linux-image-*-cloud-amd64 package in the apt sources"

mkdir -p "$CACHE_DIR"
cd "$CACHE_DIR"
if compgen -G "${kernel_pkg}_*.deb" >/dev/null; then
    echo "install-test-deps: $kernel_pkg already in $CACHE_DIR"
else
    # Root downloads into a root-owned cache: no point in apt's _apt sandbox user here.
    apt-get download -o APT::Sandbox::User=root "$kernel_pkg"
fi
ls -l "$CACHE_DIR"/*.deb
