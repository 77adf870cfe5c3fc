#!/bin/bash
# Boot-to-init time of `gapprobe boot` against qemu-system-x86_64 -enable-kvm (-M microvm
# and the default pc machine), all booting Debian's cloud kernel with the same tiny busybox
# initramfs on the real KVM inside one run of the virtual bare metal T (scripts/vbm.sh).
# Boot to init: from starting the VMM until the guest's /init prints its first line,
# timestamped inside T. A benchmark, not a test: the figures depend on the machine's load.
# usage: scripts/bench-boot.sh [REPS (default 3)]   (as root; needs scripts/install-test-deps.sh)
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
reps=${1:-3}
[[ $reps =~ ^[1-9][0-9]*$ ]] || { echo "usage: $0 [REPS]" >&2; exit 2; }
gapprobe=${GAPPROBE:-$here/../target/x86_64-unknown-linux-gnu/release/gapprobe}

work=$(mktemp -d "${TMPDIR:-/tmp}/bench-boot.XXXXXX")
trap 'rm -rf "$work"' EXIT

GAPPROBE=$gapprobe "$here/busybox-initrd.sh" "$work/bench.cpio" "$here/guest/bench-rc.sh" >/dev/null
# Each boot is bounded inside T (180 s); allow every boot of every VMM plus T itself.
timeout_s=$((reps * 3 * 200 + 120))
status=0
# The console streams (progress); the table is computed from the copy.
"$here/vbm.sh" --gapprobe "$gapprobe" --with-qemu --timeout "$timeout_s" \
    --add "$work/bench.cpio=/bench.cpio" --add "$here/guest/t-bench.sh=/etc/vbm/bench.sh" \
    -- sh /etc/vbm/bench.sh "$reps" | tee "$work/console" || status=$?
if [ "$status" != 0 ]; then
    echo "bench-boot: the T run failed (status $status)" >&2
    exit "$status"
fi
# Median per VMM; ratio = VMM's median / gapprobe's median (above 1: gapprobe is faster).
grep -a '^BENCH-RUN' "$work/console" | awk '
    {
        for (i = 2; i <= NF; i++) { split($i, kv, "="); f[kv[1]] = kv[2] }
        vmm = f["vmm"]
        if (!(vmm in n)) order[++nvmm] = vmm
        if (f["status"] != "0" || f["boot_to_init_s"] == "none") { failed[vmm]++; next }
        n[vmm]++; init[vmm, n[vmm]] = f["boot_to_init_s"]; total[vmm, n[vmm]] = f["total_s"]
    }
    function median(arr, vmm, count,    i, j, t, v) {
        for (i = 1; i <= count; i++) v[i] = arr[vmm, i]
        for (i = 1; i <= count; i++) for (j = i + 1; j <= count; j++)
            if (v[j] + 0 < v[i] + 0) { t = v[i]; v[i] = v[j]; v[j] = t }
        return (count % 2) ? v[(count + 1) / 2] : (v[count / 2] + v[count / 2 + 1]) / 2
    }
    END {
        printf "\n%-14s %5s %7s %16s %12s %10s\n", "vmm", "boots", "failed", "boot_to_init_s", "poweroff_s", "ratio"
        base = ("gapprobe" in n) ? median(init, "gapprobe", n["gapprobe"]) : 0
        for (k = 1; k <= nvmm; k++) {
            vmm = order[k]
            if (!n[vmm]) { printf "%-14s %5d %7d %16s %12s %10s\n", vmm, 0, failed[vmm], "-", "-", "-"; continue }
            m = median(init, vmm, n[vmm])
            ratio = base > 0 ? sprintf("%.2f", m / base) : "-"
            printf "%-14s %5d %7d %16.2f %12.2f %10s\n", vmm, n[vmm], failed[vmm] + 0, m, median(total, vmm, n[vmm]), ratio
        }
        print "(medians; ratio = boot_to_init / gapprobe boot_to_init)"
    }'
