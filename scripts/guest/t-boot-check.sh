#!/bin/sh
# Runs inside T (tests/vbm_boot.rs): boots the inner test guest with `gapprobe boot` and
# checks, on T's side of the VMM, that the guest's pattern reached the dump file.
# usage (in T): [KERNEL=PATH] sh /etc/vbm/boot-check.sh [extra gapprobe boot options]
#   KERNEL: the guest kernel (default T's own, /boot/vmlinuz)

DUMP=/dev/shm/log
PATTERN=GAPPROBE-DUMP-OK
PATTERN_BYTES=16

gapprobe boot --kernel "${KERNEL:-/boot/vmlinuz}" --initrd /inner.cpio --vcpus 4 --threads-per-core 2 \
    --mem 512M --dump "$DUMP" --timeout 120s "$@"
boot_status=$?
echo "VBM-BOOT-STATUS $boot_status"

if [ ! -f "$DUMP" ]; then
    echo "VBM-DUMP missing: no $DUMP"
    exit 1
fi
size=$(wc -c <"$DUMP")
head_bytes=$(head -c $PATTERN_BYTES "$DUMP")
tail_bytes=$(tail -c $PATTERN_BYTES "$DUMP")
if [ "$head_bytes" = "$PATTERN" ] && [ "$tail_bytes" = "$PATTERN" ]; then
    echo "VBM-DUMP pattern found at both ends of $DUMP ($size bytes)"
else
    echo "VBM-DUMP pattern missing in $DUMP ($size bytes); first and last bytes:"
    head -c 64 "$DUMP" | hexdump -C
    tail -c 64 "$DUMP" | hexdump -C
    exit 1
fi
exit "$boot_status"
