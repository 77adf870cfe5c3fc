#!/bin/sh
# Runs inside T (scripts/bench-boot.sh): boots /bench.cpio with each VMM in turn, REPS
# times, interleaved, and prints one BENCH-RUN line per boot and a table at the end.
# usage (in T): sh /etc/vbm/bench.sh REPS

REPS=${1:-3}
APPEND="quiet tsc=reliable"
MEM_MIB=512
VCPUS=2
KERNEL=/boot/vmlinuz
INITRD=/bench.cpio
# Per boot; a hung VMM must not eat the whole T run.
BOOT_TIMEOUT_S=180

uptime_s() { read -r up _ </proc/uptime; echo "$up"; }

# Reads a VMM's output; prints the seconds from $1 (an uptime) to the BENCH-INIT line,
# and the VMM's exit status (the last line of its output, "VMM-EXIT n").
measure() {
    start=$1 init_at='' status=''
    while IFS= read -r line; do
        case $line in
            *BENCH-INIT*) [ -n "$init_at" ] || init_at=$(uptime_s) ;;
            VMM-EXIT*) status=${line#VMM-EXIT } ;;
        esac
    done
    end=$(uptime_s)
    echo "$start ${init_at:-none} $end ${status:-none}"
}

run_vmm() {
    case $1 in
        gapprobe)
            gapprobe boot --kernel "$KERNEL" --initrd "$INITRD" --append "$APPEND" \
                --vcpus $VCPUS --mem ${MEM_MIB}M --timeout ${BOOT_TIMEOUT_S}s \
                --dump /dev/shm/bench-dump ;;
        qemu-microvm)
            timeout $BOOT_TIMEOUT_S qemu-system-x86_64 -M microvm -enable-kvm -cpu host \
                -smp $VCPUS -m $MEM_MIB -nodefaults -no-user-config -display none \
                -serial stdio -no-reboot -kernel "$KERNEL" -initrd "$INITRD" \
                -append "console=ttyS0 $APPEND" ;;
        qemu-pc)
            timeout $BOOT_TIMEOUT_S qemu-system-x86_64 -enable-kvm -cpu host \
                -smp $VCPUS -m $MEM_MIB -nodefaults -no-user-config -display none \
                -serial stdio -no-reboot -kernel "$KERNEL" -initrd "$INITRD" \
                -append "console=ttyS0 $APPEND" ;;
    esac
}

VMMS="gapprobe qemu-microvm qemu-pc"
rep=1
while [ $rep -le "$REPS" ]; do
    for vmm in $VMMS; do
        start=$(uptime_s)
        result=$({ run_vmm "$vmm" </dev/null; echo "VMM-EXIT $?"; } 2>&1 | measure "$start")
        # shellcheck disable=SC2086 # split into start, init, end, status
        set -- $result
        echo "$vmm $rep $1 $2 $3 $4" | awk '{
            init = ($4 == "none") ? "none" : sprintf("%.2f", $4 - $3)
            printf "BENCH-RUN vmm=%s rep=%d boot_to_init_s=%s total_s=%.2f status=%s\n",
                $1, $2, init, $5 - $3, $6 }'
    done
    rep=$((rep + 1))
done
