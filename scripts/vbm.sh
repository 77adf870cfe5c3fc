#!/bin/bash
# The "virtual bare metal" T: boots Debian's cloud kernel under QEMU TCG (-cpu max, which
# offers SVM+NPT), loads kvm-amd from the same kernel package, runs COMMAND inside, and
# exits with COMMAND's status. This is how real KVM guests are tested on hosts whose
# /dev/kvm cannot boot Linux (see DESIGN.md, "Facts about the development and CI machines").
#
# usage: scripts/vbm.sh [options] -- COMMAND...
#   COMMAND's words are joined with spaces and run by T's busybox sh (as ssh does).
# options:
#   --add SRC=DEST    copy a host file into T (repeatable)
#   --timeout SECS    hard limit for the whole T run (default 300)
#   --kernel-deb DEB  kernel package (default: newest linux-image-*-cloud-amd64*.deb in
#                     $GAPPROBE_TEST_CACHE, default /var/cache/gapprobe-test)
#   --gapprobe PATH   static gapprobe for T's /bin (default: the release build)
#   --compress gzip|none  compression of T's initramfs (default none: fastest under TCG)
#   --with-qemu       also put the host's (dynamic) qemu-system-x86_64 into T, with its
#                     shared libraries, loader and the x86 firmware it loads, as a
#                     reference VMM for benchmarks (adds ~50 MB to T)
#   --with-git        also put the host's (dynamic) git into T as /usr/bin/git, with its
#                     shared libraries and loader (git's commands used in T are builtins;
#                     give `git init` --template= since T has no templates)
# Inside T: /bin/gapprobe, busybox applets, /boot/vmlinuz (T's own kernel, for guests),
# /dev/kvm, tmpfs on /dev/shm and /tmp.
# Exit status: COMMAND's status (`VBM-RESULT: status=N` on the console); otherwise
#   2 bad usage or missing prerequisite (scripts/install-test-deps.sh installs them),
#   3 T could not load KVM, 4 T ended without reporting (kernel panic, crash),
#   124 timeout. Each failure prints one `vbm: FAIL: ...` line on stderr.
set -euo pipefail
shopt -s extglob

here=$(cd "$(dirname "$0")" && pwd)
cache_dir=${GAPPROBE_TEST_CACHE:-/var/cache/gapprobe-test}
timeout_s=300
kernel_deb=
gapprobe=$here/../target/x86_64-unknown-linux-gnu/release/gapprobe
adds=()
with_qemu=
with_git=
compress=none

EXIT_USAGE=2
EXIT_SETUP=3
EXIT_NO_RESULT=4
EXIT_TIMEOUT=124

fail() { local code=$1; shift; echo "vbm: FAIL: $*" >&2; exit "$code"; }

while [ $# -gt 0 ]; do
    case $1 in
        --add) adds+=("$2"); shift 2 ;;
        --timeout) timeout_s=$2; shift 2 ;;
        --kernel-deb) kernel_deb=$2; shift 2 ;;
        --gapprobe) gapprobe=$2; shift 2 ;;
        --with-qemu) with_qemu=1; shift ;;
        --with-git) with_git=1; shift ;;
        --compress) compress=$2; shift 2 ;;
        --) shift; break ;;
        *) fail $EXIT_USAGE "unknown option $1 (usage: $0 [options] -- COMMAND...)" ;;
    esac
done
[ $# -gt 0 ] || fail $EXIT_USAGE "no command (usage: $0 [options] -- COMMAND...)"
[[ $timeout_s =~ ^[0-9]+$ ]] || fail $EXIT_USAGE "--timeout wants whole seconds, got $timeout_s"

need() { command -v "$1" >/dev/null || fail $EXIT_USAGE "$1 not found ($2; run scripts/install-test-deps.sh)"; }
need qemu-system-x86_64 "package qemu-system-x86"
need busybox "package busybox-static"
need dpkg-deb "package dpkg"
need stdbuf "package coreutils"
[ -x "$gapprobe" ] || fail $EXIT_USAGE "no gapprobe at $gapprobe (cargo build --release, or --gapprobe)"

if [ -z "$kernel_deb" ]; then
    kernel_deb=$(find "$cache_dir" -maxdepth 1 -name 'linux-image-*-cloud-amd64*.deb' 2>/dev/null \
        | sort -V | tail -n1)
    [ -n "$kernel_deb" ] || fail $EXIT_USAGE "no linux-image-*-cloud-amd64*.deb in $cache_dir (run scripts/install-test-deps.sh)"
fi
[ -r "$kernel_deb" ] || fail $EXIT_USAGE "cannot read kernel package $kernel_deb"

work=$(mktemp -d "${TMPDIR:-/tmp}/vbm.XXXXXX")
qemu_pid=
# shellcheck disable=SC2317 # called by the EXIT trap
cleanup() {
    if [ -n "$qemu_pid" ]; then kill "$qemu_pid" 2>/dev/null || true; fi
    rm -rf "$work"
}
trap cleanup EXIT
# Interrupted (Ctrl-C, a test runner's kill): exit through the EXIT trap so QEMU goes too.
trap 'exit 130' INT
trap 'exit 143' TERM

# Only the kernel image and the three KVM modules are needed from the package.
dpkg-deb --fsys-tarfile "$kernel_deb" | tar -x -C "$work" --wildcards \
    './boot/vmlinuz-*' '*/kernel/virt/lib/irqbypass.ko*' \
    '*/kernel/arch/x86/kvm/kvm.ko*' '*/kernel/arch/x86/kvm/kvm-amd.ko*'
vmlinuz=$(find "$work/boot" -name 'vmlinuz-*' | head -n1)
[ -n "$vmlinuz" ] || fail $EXIT_USAGE "$kernel_deb has no /boot/vmlinuz-*"
module_adds=()
for module in irqbypass kvm kvm-amd; do
    ko=$(find "$work" -path "*/kernel/*" -name "$module.ko*" | head -n1)
    [ -n "$ko" ] || fail $EXIT_USAGE "$kernel_deb has no $module.ko"
    # Newer packages compress modules; busybox insmod wants them plain.
    case $ko in
        *.xz) xz -d "$ko"; ko=${ko%.xz} ;;
        *.zst) zstd -q -d --rm "$ko"; ko=${ko%.zst} ;;
    esac
    module_adds+=("$ko=/lib/modules/vbm/$module.ko")
done

# T has no package manager: a dynamic program goes in as DEST with every file ldd resolves
# for it (its libraries and the loader, at the same paths).
# usage: dynamic_adds PROGRAM DEST
dynamic_adds() {
    local file
    echo "$1=$2"
    ldd "$1" | awk '{ for (i = 1; i <= NF; i++) if ($i ~ /^\//) print $i }' | sort -u |
        while read -r file; do echo "$file=$file"; done
}
# QEMU, and the firmware the pc and microvm machines load.
qemu_adds() {
    local file
    dynamic_adds "$(command -v qemu-system-x86_64)" /usr/bin/qemu-system-x86_64
    for file in bios-256k.bin bios-microvm.bin linuxboot_dma.bin kvmvapic.bin; do
        local found
        found=$(qemu_firmware "$file") || fail $EXIT_USAGE "QEMU firmware $file not found"
        echo "$found=/usr/share/qemu/$file"
    done
}
qemu_firmware() {
    local dir
    while read -r dir; do
        if [ -e "$dir/$1" ]; then echo "$dir/$1"; return 0; fi
    done < <(qemu-system-x86_64 -L help)
    return 1
}
: >"$work/program-files"
if [ -n "$with_qemu" ]; then
    qemu_adds >>"$work/program-files" || exit
fi
if [ -n "$with_git" ]; then
    need git "package git"
    dynamic_adds "$(command -v git)" /usr/bin/git >>"$work/program-files" || exit
fi
# QEMU and git share libraries (libc, the loader): each goes in once.
mapfile -t program_files < <(sort -u "$work/program-files")
adds+=("${program_files[@]}")

printf '%s\n' "$*" >"$work/command"
GAPPROBE=$gapprobe COMPRESS=$compress "$here/busybox-initrd.sh" "$work/t.cpio" "$here/guest/t-rc.sh" \
    "${module_adds[@]}" "$vmlinuz=/boot/vmlinuz" "$gapprobe=/bin/gapprobe" \
    "$work/command=/etc/vbm/command" "${adds[@]}" >/dev/null \
    || fail $EXIT_USAGE "building T's initramfs failed"

echo "vbm: T = $(basename "$kernel_deb"), timeout ${timeout_s}s, command: $*" >&2
started=$EPOCHREALTIME
# la57=off: with 5-level paging in T (QEMU 7.2 TCG, -cpu max), T's KVM now and then handed
# a guest vCPU T's own state (its RIP read back as T's kvm_amd __svm_vcpu_run, just after
# VMRUN; RSP on T's stack): that vCPU never ran again, the guest stalled or triple-faulted.
# Nested L1s hit this within a minute (7 of 7 runs of the built kernel), plain guests rarely.
# With 4-level paging it is rarer (6 of 15 nested runs) but not gone; tests/vbm_harness.rs
# runs T again when l1-harness names it (README, "The virtual bare metal").
# stdbuf: QEMU's stdout is a pipe here and would otherwise be block-buffered.
# -k: a QEMU that ignores SIGTERM is killed 5 s later.
exec 3< <(timeout -k 5 "$timeout_s" stdbuf -oL qemu-system-x86_64 \
    -accel tcg -cpu max,la57=off -smp 2 -m 4G -nographic -no-reboot -nic none \
    -kernel "$vmlinuz" -initrd "$work/t.cpio" \
    -append "console=ttyS0 quiet tsc=reliable panic=-1" \
    </dev/null 2>&1)
qemu_pid=$!

result='' setup_failed='' ready_at=''
while IFS= read -r line <&3 || [ -n "$line" ]; do
    line=${line%$'\r'}
    # SeaBIOS draws with terminal escapes (reset, CSI) before the kernel starts.
    line=${line//$'\e'c/}
    line=${line//$'\e'[\[]*([0-9;?])[a-zA-Z]/}
    printf '%s\n' "$line"
    case $line in
        *VBM-T-READY*) ready_at=$EPOCHREALTIME ;;
        *VBM-RESULT:*) result=VBM-RESULT:${line#*VBM-RESULT:} ;;
        *VBM-SETUP-FAILED:*) setup_failed=${line#*VBM-SETUP-FAILED: } ;;
    esac
done
exec 3<&-

qemu_status=0
wait "$qemu_pid" || qemu_status=$?
qemu_pid=
ended=$EPOCHREALTIME
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", b - a }'; }

if [ -n "$ready_at" ]; then
    echo "vbm: T booted to its rc in $(elapsed "$started" "$ready_at") s; whole run $(elapsed "$started" "$ended") s" >&2
fi
if [ -n "$result" ]; then
    status=${result#VBM-RESULT: status=}
    status=${status%% *}
    echo "vbm: command exited with status $status" >&2
    exit "$status"
fi
[ -z "$setup_failed" ] || fail $EXIT_SETUP "T could not provide KVM: $setup_failed"
[ "$qemu_status" != 124 ] || fail $EXIT_TIMEOUT "timeout: T did not finish within ${timeout_s}s (QEMU killed)"
fail $EXIT_NO_RESULT "T ended (QEMU status $qemu_status) without reporting the command's status: see the console above"
