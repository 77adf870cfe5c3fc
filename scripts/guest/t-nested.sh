#!/bin/sh
# Runs inside T (tests/vbm_nested.rs): the kvm target with our VMM at both levels. Builds
# the L2 initramfs (/init = gapprobe) and the L1 initramfs (gapprobe, Debian's KVM modules,
# the L2 kernel and initramfs), boots L1 with `gapprobe boot --nested`, and prints the
# nested JSON result that L1 left in the dump region.
# usage (in T): [KERNEL=PATH] [L2_KERNEL=PATH] [VCPUS=N] sh /etc/vbm/nested.sh L2_VMS DURATION MAX_GAP BOOT_TIMEOUT [NESTED_ARGS...]
#   KERNEL: L1's kernel, with KVM built in (kernels/gapprobe.config); default T's own Debian
#   kernel, whose KVM modules L1 then loads.
#   L2_KERNEL: the L2s' kernel; default T's Debian kernel (no hwlat tracer: gapprobe's own
#   sampler).
#   VCPUS: L1's vCPUs, 2 per core (default 4)
# Lines starting with VBM-NESTED- are read by the test.

vms=$1 duration=$2 max_gap=$3 boot_timeout=$4
shift 4
DUMP=/dev/shm/log
modules=/lib/modules/vbm
console=/tmp/l1-console

kernel=${KERNEL:-/boot/vmlinuz}
module_adds= module_arg=
if [ -z "$KERNEL" ]; then
    for module in irqbypass kvm kvm-amd; do
        module_adds="$module_adds --add $modules/$module.ko=/modules/$module.ko"
    done
    module_arg=gapprobe.modules=irqbypass.ko,kvm.ko,kvm-amd.ko
fi

gapprobe initrd -o /tmp/l2.cpio >/dev/null || exit 1
# shellcheck disable=SC2086 # module_adds is a list of words
gapprobe initrd -o /tmp/l1.cpio \
    --add "${L2_KERNEL:-/boot/vmlinuz}"=/l2/vmlinuz --add /tmp/l2.cpio=/l2/initrd $module_adds >/dev/null || exit 1

args="--l2-vms $vms --duration $duration --max-gap $max_gap $*"
{
    gapprobe boot --nested --kernel "$kernel" --initrd /tmp/l1.cpio --vcpus "${VCPUS:-4}" \
        --threads-per-core 2 --mem 2G --dump "$DUMP" --timeout "$boot_timeout" \
        --append "quiet tsc=reliable idle=poll gapprobe.role=nested $module_arg gapprobe.args=\"$args\""
    echo "VBM-NESTED-BOOT-STATUS $?"
} 2>&1 | tee "$console"

# gapprobe-dump: trace=N json=M: the JSON follows N bytes of trace in the dump file.
dump_line=$(grep '^gapprobe-dump: ' "$console" | tail -n1)
if [ -z "$dump_line" ]; then
    echo "VBM-NESTED-NO-DUMP-LINE"
    exit 1
fi
trace_bytes=$(echo "$dump_line" | sed 's/.*trace=\([0-9]*\).*/\1/')
json_bytes=$(echo "$dump_line" | sed 's/.*json=\([0-9]*\).*/\1/')
echo "VBM-NESTED-JSON $(dd if="$DUMP" bs=1 skip="$trace_bytes" count="$json_bytes" 2>/dev/null)"
if [ "$trace_bytes" -gt 0 ]; then
    echo "VBM-NESTED-TRACE-MARKERS $(head -c "$trace_bytes" "$DUMP" | grep -c 'gapprobe: vm[0-9]* gap of')"
fi
exit 0
