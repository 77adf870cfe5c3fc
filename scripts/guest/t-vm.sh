#!/bin/sh
# Runs inside T (tests/vbm_vm.rs): one `gapprobe vm` against $KERNEL (default T's own
# kernel, Debian's, at /boot/vmlinuz) as the kernel under test, then reports on T's side of the VMM what the test
# asserts: the exit status, gapprobe's stderr lines, the dump file and its trace markers,
# the --json result, and whether any gapprobe process was left running.
# usage (in T): [KERNEL=PATH] sh /etc/vbm/vm.sh NAME [gapprobe vm options]
# Lines starting with VBM-VM- are read by the test; NAME tags each of them.

name=$1
shift
DUMP=/dev/shm/log
JSON=/tmp/$name.json
ERR=/tmp/$name.err
MARKER='tracing_mark_write: gapprobe:'
# Fields of the --json result (user or nested schema) that the test reads.
FIELDS='target|exceeded|end|l2_vms|dump_bytes|core_sched'

uptime_s() { read -r up _ </proc/uptime; echo "$up"; }

rm -f "$DUMP" "$JSON"
start=$(uptime_s)
# stdout (L1's relayed lines, the summary) goes to the console as it comes; stderr is
# kept so its lines can be counted, then shown.
gapprobe vm --kernel "${KERNEL:-/boot/vmlinuz}" --dump "$DUMP" --json "$JSON" "$@" 2>"$ERR"
status=$?
echo "VBM-VM-STATUS $name $status"
echo "VBM-VM-SECONDS $name $(echo "$(uptime_s) $start" | awk '{printf "%.1f", $1 - $2}')"
sed "s/^/VBM-VM-STDERR $name /" "$ERR"
echo "VBM-VM-STDERR-LINES $name $(wc -l <"$ERR")"

if [ -f "$DUMP" ]; then
    echo "VBM-VM-DUMP $name bytes=$(wc -c <"$DUMP") markers=$(grep -c "$MARKER" "$DUMP")"
    grep -m1 "$MARKER" "$DUMP" | sed "s/^/VBM-VM-MARKER $name /"
else
    echo "VBM-VM-DUMP $name absent"
fi
if [ -f "$JSON" ]; then
    echo "VBM-VM-JSON $name bytes=$(wc -c <"$JSON")"
    # The fields the test asserts on, one per line (the whole result is tens of KB, slow on
    # an emulated console), from the pretty user result or the one-line nested one:
    # the first `"key": value` becomes `VBM-VM-FIELD NAME key value`.
    for key in $(echo "$FIELDS" | tr '|' ' '); do
        grep -o "\"$key\": *[^,}]*" "$JSON" | head -n1 |
            sed -e "s/^\"$key\": */VBM-VM-FIELD $name $key /"
    done
else
    echo "VBM-VM-JSON $name absent"
fi
# T's busybox has no pgrep: count processes named gapprobe through /proc.
left=$(cat /proc/[0-9]*/comm 2>/dev/null | grep -c '^gapprobe$')
echo "VBM-VM-LEFT $name $left"
exit 0
