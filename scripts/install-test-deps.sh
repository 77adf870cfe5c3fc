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
# The kernel under test built with kernels/gapprobe.config (scripts/build-kernel.sh) and its
# checks (scripts/check-kernel.sh, which compiles a static prctl probe).
apt-get install -y --no-install-recommends \
    linux-source-6.12 build-essential libc6-dev bc flex bison libelf-dev lz4 binutils

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

# Unpack the kernel source once per package version (the build cache keys on the tree, so a
# new version rebuilds).
source_tar=$(compgen -G '/usr/src/linux-source-6.12.tar.*' | head -n1 || true)
[ -n "$source_tar" ] || die "linux-source-6.12 installed no tarball under /usr/src"
source_version=$(dpkg-query -W -f='${Version}' linux-source-6.12)
if [ "$(cat "$CACHE_DIR/linux-source-6.12.version" 2>/dev/null)" != "$source_version" ]; then
    rm -rf "$CACHE_DIR/linux-source-6.12"
    tar -xf "$source_tar" -C "$CACHE_DIR"
    echo "$source_version" > "$CACHE_DIR/linux-source-6.12.version"
fi
echo "install-test-deps: kernel source $source_version in $CACHE_DIR/linux-source-6.12"
