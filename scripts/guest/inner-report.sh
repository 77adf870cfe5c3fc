#!/bin/sh
# /etc/rc of the inner test guest (booted inside T by the VMM under test). Reports the
# CPU topology the guest sees and writes a known pattern to the VMM's dump region, named
# on the kernel command line as gapprobe.dump=0xADDR,0xSIZE. Every line it prints starts
# with INNER- so the outer test can find it in the nested console output.

/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev

echo "INNER-INIT uptime=$(cut -d' ' -f1 /proc/uptime)"
echo "INNER-NPROC $(nproc)"
cpu=0
while [ -d "/sys/devices/system/cpu/cpu$cpu" ]; do
    echo "INNER-SIBLINGS cpu$cpu $(cat "/sys/devices/system/cpu/cpu$cpu/topology/thread_siblings_list")"
    cpu=$((cpu + 1))
done

# What the kernel under test offers gapprobe: its tracers, and (when the test put gapprobe into
# this initramfs) core scheduling, exercised by gapprobe's own busy threads with one cookie per
# group: `--core-sched group` fails unless the prctl (or a legacy cgroup) gives cookies.
if mount -t tracefs tracefs /sys/kernel/tracing 2>/dev/null; then
    echo "INNER-TRACERS $(cat /sys/kernel/tracing/available_tracers)"
    umount /sys/kernel/tracing
else
    echo "INNER-TRACERS (no tracefs)"
fi
if [ -x /bin/gapprobe ]; then
    coresched=$(gapprobe run --core-sched group --groups 2 --threads-per-group 2 --cpus 0,1 \
        --duration 1s --max-gap 30s --no-trace 2>&1)
    echo "INNER-CORESCHED status=$? $(echo "$coresched" | grep -E '^(result|gapprobe):' | tr '\n' ' ')"
fi

# "GAPPROBE-DUMP-OK" as little-endian 32-bit words, at the start and at the end of the
# region, so the outer side checks both ends of the mapping.
PATTERN_WORDS="0x50504147 0x45424f52 0x4d55442d 0x4b4f2d50"
PATTERN_BYTES=16

# Leaves the failing address in $failed_at.
write_pattern() {
    at=$1
    for word in $PATTERN_WORDS; do
        failed_at=$(printf 0x%x "$at")
        devmem "$failed_at" 32 "$word" || return 1
        # Read back: a write into unbacked guest-physical space vanishes silently.
        [ "$(devmem "$failed_at" 32)" = "$(printf 0x%08X "$word")" ] || return 1
        at=$((at + 4))
    done
}

dump=
# shellcheck disable=SC2013 # the command line is one line of words
for arg in $(cat /proc/cmdline); do
    case $arg in gapprobe.dump=*) dump=${arg#gapprobe.dump=} ;; esac
done
if [ -z "$dump" ]; then
    echo "INNER-DUMP-ERROR no gapprobe.dump= on the kernel command line: $(cat /proc/cmdline)"
else
    addr=$((${dump%,*})) size=$((${dump#*,}))
    if [ "$size" -lt $((2 * PATTERN_BYTES)) ]; then
        echo "INNER-DUMP-ERROR region of $size bytes is too small for the pattern"
    elif write_pattern "$addr" && write_pattern $((addr + size - PATTERN_BYTES)); then
        echo "INNER-DUMP-WRITTEN $dump"
    else
        echo "INNER-DUMP-ERROR devmem could not write (or read back) $failed_at in region $dump"
    fi
fi
sleep 0.2
poweroff -f
