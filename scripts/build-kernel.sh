#!/bin/bash
# Builds an x86_64 bzImage for gapprobe from a Linux source tree: `make allnoconfig` plus
# kernels/gapprobe.config, merged with the kernel's own scripts/kconfig/merge_config.sh -m and
# completed by `make olddefconfig`. Every value the fragment sets must survive into the final
# .config (olddefconfig silently drops options whose dependencies are off); any that did not is
# printed and the build fails.
#
# usage: scripts/build-kernel.sh SRC_TREE [OUT]
#   SRC_TREE  a kernel source tree (git checkout or unpacked tarball). It is never written to:
#             the build runs out of tree (O=), so `git bisect` keeps a clean tree.
#   OUT       also copy the image there (a file path, or an existing directory: OUT/bzImage)
# env:
#   GAPPROBE_KERNEL_CACHE     cache root (default /var/cache/gapprobe-kernels)
#   GAPPROBE_KERNEL_FRAGMENT  config fragment (default kernels/gapprobe.config next to this script)
# Cache: CACHE/<version>-<key>/bzImage, where key hashes (source revision, the fragment's settings
# (not its comments), base config, compiler). Source revision: for a git work tree (SRC_TREE is its top level) `git rev-parse HEAD`
# plus a hash of `git diff HEAD` when tracked files are modified (untracked files do not count);
# otherwise a hash of the top Makefile and of the sorted list of every file's path, size and
# mtime (cheap, and any edit or unpacked update changes an mtime). A hit prints the path without
# building. The object tree is deleted after a successful build: a hit never needs it, and an
# interrupted build resumes incrementally in CACHE/<key>/build.
# Output: make's progress on stderr (and in CACHE/<key>/build.log); the image path is the last
# (and only) line of stdout.
# Exit: 0 image ready; 1 configuration check or build failed; 2 bad usage, missing or unusable
# tree, missing toolchain, unwritable cache.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
fragment=${GAPPROBE_KERNEL_FRAGMENT:-$here/../kernels/gapprobe.config}
cache_root=${GAPPROBE_KERNEL_CACHE:-/var/cache/gapprobe-kernels}
# ARCH=x86_64 rather than the host's ARCH=x86: with ARCH=x86 allnoconfig picks a 32-bit kernel.
kernel_arch=x86_64
base_config=allnoconfig

EXIT_FAILED=1
EXIT_USAGE=2

die() { local code=$1; shift; echo "build-kernel: $*" >&2; exit "$code"; }
note() { echo "build-kernel: $*" >&2; }

if [ $# -lt 1 ] || [ $# -gt 2 ]; then
    echo "usage: $0 SRC_TREE [OUT]   (builds bzImage with kernels/gapprobe.config; prints its path)" >&2
    exit "$EXIT_USAGE"
fi
[ -d "$1" ] || die "$EXIT_USAGE" "no source tree at $1"
src=$(cd "$1" && pwd -P)
out=${2:-}

for f in Makefile Kconfig arch/x86/Makefile scripts/kconfig/merge_config.sh; do
    [ -f "$src/$f" ] || die "$EXIT_USAGE" "$src is not a kernel source tree (no $f)"
done
# Kbuild refuses an O= build from a tree that was configured in place.
if [ -e "$src/.config" ] || [ -d "$src/include/config" ]; then
    die "$EXIT_USAGE" "$src has in-tree build products (.config); run: make -C $src mrproper"
fi
# Checked now rather than after a long build.
if [ -n "$out" ] && [ ! -d "$out" ] && [ ! -d "$(dirname "$out")" ]; then
    die "$EXIT_USAGE" "no directory for $out"
fi
[ -r "$fragment" ] || die "$EXIT_USAGE" "no config fragment at $fragment"
fragment=$(cd "$(dirname "$fragment")" && pwd -P)/$(basename "$fragment")

check_toolchain() {
    local missing_pkgs=() tool pkg
    # tool:package pairs for what a bzImage build runs (objtool needs libelf, timeconst needs bc).
    for pair in gcc:gcc make:make flex:flex bison:bison bc:bc ld:binutils perl:perl; do
        tool=${pair%%:*} pkg=${pair#*:}
        command -v "$tool" >/dev/null || missing_pkgs+=("$pkg")
    done
    if grep -qx 'CONFIG_KERNEL_LZ4=y' "$fragment"; then
        command -v lz4 >/dev/null || missing_pkgs+=(lz4)
    fi
    if command -v gcc >/dev/null &&
        ! printf '#include <libelf.h>\n' | gcc -E -x c - >/dev/null 2>&1; then
        missing_pkgs+=(libelf-dev)
    fi
    if [ ${#missing_pkgs[@]} -gt 0 ]; then
        die "$EXIT_USAGE" "missing toolchain: apt-get install ${missing_pkgs[*]}"
    fi
}

kernel_version() {
    awk -F' *= *' '$1 ~ /^(VERSION|PATCHLEVEL|SUBLEVEL|EXTRAVERSION)$/ { v[$1] = $2 }
        END { printf "%s.%s.%s%s", v["VERSION"], v["PATCHLEVEL"], v["SUBLEVEL"], v["EXTRAVERSION"] }' \
        "$src/Makefile"
}

source_revision() {
    local top
    top=$(git -C "$src" rev-parse --show-toplevel 2>/dev/null || true)
    if [ -n "$top" ] && [ "$(cd "$top" && pwd -P)" = "$src" ]; then
        local head dirty
        head=$(git -C "$src" rev-parse HEAD)
        if git -C "$src" diff --quiet HEAD; then
            echo "git $head"
        else
            dirty=$(git -C "$src" diff --no-ext-diff --binary HEAD | sha256sum | cut -c1-64)
            echo "git $head dirty $dirty"
        fi
    else
        local makefile tree
        makefile=$(sha256sum <"$src/Makefile" | cut -c1-64)
        tree=$(cd "$src" && find . -type f -printf '%P %s %T@\n' | LC_ALL=C sort | sha256sum | cut -c1-64)
        echo "tree makefile $makefile files $tree"
    fi
}

cache_key() {
    {
        echo "base $base_config ARCH=$kernel_arch"
        echo "source $(source_revision)"
        # Only the settings, in order: editing a comment must not cost a rebuild.
        echo "fragment $(grep -E '^(CONFIG_|# CONFIG_[A-Za-z0-9_]+ is not set)' "$fragment" | sha256sum | cut -c1-64)"
        echo "compiler $(gcc --version | head -n1)"
    } | sha256sum | cut -c1-16
}

# Prints each fragment line missing from the final config with what became of it; fails if any.
verify_config() {
    local final=$1 line sym now dropped=0
    while IFS= read -r line; do
        case $line in
            CONFIG_*=*)
                sym=${line%%=*}
                grep -qxF -- "$line" "$final" && continue ;;
            "# CONFIG_"*" is not set")
                sym=${line#\# } sym=${sym%% *}
                grep -q "^$sym=" "$final" || continue ;;
            *) continue ;;
        esac
        now=$(grep -E "^(# )?${sym}[= ]" "$final" || echo "absent (unknown symbol or unmet dependency)")
        echo "build-kernel: dropped: $line -> $now" >&2
        dropped=$((dropped + 1))
    done <"$fragment"
    [ "$dropped" -eq 0 ] || die "$EXIT_FAILED" "$dropped fragment value(s) did not survive olddefconfig: add their dependencies to $fragment"
}

deliver() {
    local image=$1
    if [ -n "$out" ]; then
        [ -d "$out" ] && out=$out/bzImage
        cp -- "$image" "$out" 2>/dev/null || die "$EXIT_USAGE" "cannot write $out"
        echo "$out"
    else
        echo "$image"
    fi
}

check_toolchain
command -v git >/dev/null || [ ! -e "$src/.git" ] || die "$EXIT_USAGE" "missing toolchain: apt-get install git"

key=$(kernel_version)-$(cache_key)
key_dir=$cache_root/$key
image=$key_dir/bzImage
if [ -f "$image" ]; then
    note "cache hit $key"
    deliver "$image"
    exit 0
fi

if ! mkdir -p "$key_dir" 2>/dev/null || [ ! -w "$key_dir" ]; then
    die "$EXIT_USAGE" "cannot write the cache $cache_root (set GAPPROBE_KERNEL_CACHE)"
fi
exec 9>"$key_dir/.lock"
if ! flock -n 9; then
    note "waiting for another build of $key"
    flock 9
fi
if [ -f "$image" ]; then
    note "cache hit $key (built meanwhile)"
    deliver "$image"
    exit 0
fi

build=$key_dir/build
log=$key_dir/build.log
mkdir -p "$build"
: >"$log"
kmake() { make -C "$src" O="$build" ARCH="$kernel_arch" "$@"; }

note "building $src ($(kernel_version)) into $build, log $log"
start=$SECONDS
{
    kmake "$base_config"
    # merge_config.sh leaves temporary files in its working directory: keep them out of SRC.
    (cd "$build" && "$src/scripts/kconfig/merge_config.sh" -m -O "$build" "$build/.config" "$fragment")
    kmake olddefconfig
} >>"$log" 2>&1 || die "$EXIT_FAILED" "configuration failed (log: $log)"
verify_config "$build/.config"
note "config: $base_config + $(basename "$fragment"): every fragment value present"

jobs=$(nproc)
if ! kmake -j"$jobs" bzImage 2>&1 | tee -a "$log" >&2; then
    die "$EXIT_FAILED" "make bzImage failed (log: $log)"
fi

cp -- "$build/.config" "$key_dir/config"
cp -- "$build/System.map" "$key_dir/System.map"
cp -- "$build/arch/x86/boot/bzImage" "$image.tmp"
mv -- "$image.tmp" "$image"
rm -rf -- "$build"
note "built $key in $(((SECONDS - start) / 60)) min $(((SECONDS - start) % 60)) s, $(stat -c %s "$image") bytes"
deliver "$image"
