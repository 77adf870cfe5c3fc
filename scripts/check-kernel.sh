#!/bin/bash
# Boots a kernel built with kernels/gapprobe.config under QEMU TCG and checks, from a busybox
# initramfs, what gapprobe relies on. Two boots, because one emulated CPU cannot offer both:
#   kvm: `-cpu max` (AMD vendor, SVM): tracers (hwlat, osnoise, timerlat), the trace events
#        gapprobe enables, /dev/kvm from the built-in kvm-amd, /dev/mem, cpuset/cpu cgroup
#        controllers, hugetlbfs.
#   smt: an Intel-vendor CPU with `-smp 4,threads=2` (QEMU shows SMT siblings to Intel-vendor
#        guests only, and TCG has no VMX, so no /dev/kvm here): cpu0's siblings are 0-1 and
#        core scheduling works (prctl PR_SCHED_CORE GET, CREATE, then GET returns a cookie).
# usage: scripts/check-kernel.sh BZIMAGE
# env: CHECK_TIMEOUT seconds per boot (default 300), SMT_CPU QEMU CPU model for the smt boot
#      (default max,vendor=GenuineIntel)
# Prints one `check-kernel: <boot> <check>: pass|FAIL <detail>` line per check, and for each boot
# whether the guest powered off (ACPI S5) after its checks.
# Exit: 0 every check passed; 1 a check failed or a boot did not finish; 2 bad usage or a
#       missing prerequisite.
set -euo pipefail

timeout_s=${CHECK_TIMEOUT:-300}
# The guest powers off right after its last check; a kernel that cannot halts instead.
poweroff_grace_s=30
smt_cpu=${SMT_CPU:-max,vendor=GenuineIntel}
EXIT_FAILED=1
EXIT_USAGE=2

die() { local code=$1; shift; echo "check-kernel: $*" >&2; exit "$code"; }

[ $# -eq 1 ] || { echo "usage: $0 BZIMAGE" >&2; exit "$EXIT_USAGE"; }
kernel=$1
[ -f "$kernel" ] || die "$EXIT_USAGE" "no kernel image at $kernel"

missing=()
command -v qemu-system-x86_64 >/dev/null || missing+=(qemu-system-x86)
command -v cpio >/dev/null || missing+=(cpio)
command -v gcc >/dev/null || missing+=(gcc)
[ -f /usr/lib/x86_64-linux-gnu/libc.a ] || missing+=(libc6-dev)
command -v readelf >/dev/null || missing+=(binutils)
busybox=$(command -v busybox || true)
# The initramfs has no shared libraries: a dynamic busybox (package busybox) cannot run there.
if [ -z "$busybox" ] || readelf -l "$busybox" 2>/dev/null | grep -q 'program interpreter'; then
    missing+=(busybox-static)
fi
[ ${#missing[@]} -eq 0 ] || die "$EXIT_USAGE" "missing prerequisites: apt-get install ${missing[*]}"

work=$(mktemp -d /tmp/check-kernel.XXXXXX)
qemu=
# A failing command must not leave an emulator running.
cleanup() {
    [ -z "$qemu" ] || kill "$qemu" 2>/dev/null || true
    rm -rf -- "$work"
}
trap cleanup EXIT
root=$work/root
mkdir -p "$root"/{bin,dev,proc,sys,tmp}
cp "$busybox" "$root/bin/busybox"

# Core-scheduling probe: GET must succeed (it fails with ENODEV when the kernel sees no SMT
# siblings), then CREATE a cookie for this thread and GET it back non-zero.
cat >"$work/sched-core-probe.c" <<'EOF'
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/prctl.h>

static int get_cookie(unsigned long long *cookie)
{
	return prctl(PR_SCHED_CORE, PR_SCHED_CORE_GET, 0, PR_SCHED_CORE_SCOPE_THREAD,
		     (unsigned long)cookie);
}

int main(void)
{
	unsigned long long cookie = 0;

	if (get_cookie(&cookie) != 0) {
		printf("PR_SCHED_CORE_GET: %s\n", strerror(errno));
		return 1;
	}
	if (prctl(PR_SCHED_CORE, PR_SCHED_CORE_CREATE, 0, PR_SCHED_CORE_SCOPE_THREAD, 0) != 0) {
		printf("PR_SCHED_CORE_CREATE: %s\n", strerror(errno));
		return 1;
	}
	if (get_cookie(&cookie) != 0 || cookie == 0) {
		printf("cookie after PR_SCHED_CORE_CREATE: %#llx (%s)\n", cookie, strerror(errno));
		return 1;
	}
	printf("cookie %#llx\n", cookie);
	return 0;
}
EOF
gcc -static -O2 -Wall -Werror -o "$root/bin/sched-core-probe" "$work/sched-core-probe.c"

# The guest side: prints `CHECK <name> pass|FAIL <detail>` lines, then `CHECKS-DONE`.
cat >"$root/init" <<'EOF'
#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tracefs tracefs /sys/kernel/tracing

check() {
    name=$1 detail=$2
    shift 2
    if "$@" >/dev/null 2>&1; then echo "CHECK $name pass $detail"; else echo "CHECK $name FAIL $detail"; fi
}
tracing=/sys/kernel/tracing
boot=$(sed -n 's/.*check_boot=\([a-z]*\).*/\1/p' /proc/cmdline)
case $boot in
kvm)
    for tracer in hwlat osnoise timerlat; do
        check "tracer-$tracer" "($(cat $tracing/available_tracers))" grep -qw "$tracer" $tracing/available_tracers
    done
    for group in sched irq timer syscalls; do
        check "events-$group" "" test -d "$tracing/events/$group"
    done
    echo hwlat >$tracing/current_tracer 2>/dev/null
    check hwlat-starts "(current_tracer: $(cat $tracing/current_tracer))" grep -qx hwlat $tracing/current_tracer
    echo nop >$tracing/current_tracer
    check dev-kvm "($(ls -l /dev/kvm 2>&1))" test -c /dev/kvm
    check dev-mem "" test -c /dev/mem
    mkdir -p /sys/fs/cgroup
    mount -t cgroup2 none /sys/fs/cgroup
    check cgroup-cpuset-cpu "($(cat /sys/fs/cgroup/cgroup.controllers))" \
        sh -c 'grep -qw cpuset /sys/fs/cgroup/cgroup.controllers && grep -qw cpu /sys/fs/cgroup/cgroup.controllers'
    check hugetlbfs "" grep -qw hugetlbfs /proc/filesystems
    ;;
smt)
    siblings=$(cat /sys/devices/system/cpu/cpu0/topology/thread_siblings_list)
    check cpu0-siblings "(thread_siblings_list: $siblings)" test "$siblings" = 0-1
    probe=$(sched-core-probe 2>&1)
    check sched-core-prctl "($probe)" sched-core-probe
    ;;
*)
    echo "CHECK boot-mode FAIL (no check_boot= on the command line)"
    ;;
esac
echo CHECKS-DONE
poweroff -f
EOF
chmod +x "$root/init"
(cd "$root" && find . | cpio -o -H newc --quiet | gzip -1) >"$work/initrd.gz"

failed=0
# Polls until PID exits or SECS pass; succeeds if it exited.
wait_exit() {
    local pid=$1 deadline=$((SECONDS + $2))
    while kill -0 "$pid" 2>/dev/null; do
        [ "$SECONDS" -lt "$deadline" ] || return 1
        sleep 0.2
    done
}

# boot NAME QEMU-CPU SMP: runs one boot and reports its CHECK lines, then whether the guest
# powered off (ACPI S5) within poweroff_grace_s of finishing.
boot() {
    local name=$1 cpu=$2 smp=$3 console=$work/console-$1.log start=$SECONDS done_at
    qemu-system-x86_64 -accel tcg -cpu "$cpu" -smp "$smp" -m 1G \
        -nographic -no-reboot -kernel "$kernel" -initrd "$work/initrd.gz" \
        -append "console=ttyS0 quiet tsc=reliable panic=-1 check_boot=$name" \
        </dev/null >"$console" 2>&1 &
    qemu=$!
    while kill -0 "$qemu" 2>/dev/null && ! grep -q CHECKS-DONE "$console" &&
        [ $((SECONDS - start)) -lt "$timeout_s" ]; do
        sleep 0.5
    done
    done_at=$((SECONDS - start))
    # Not anchored: the firmware's terminal escapes precede the first line.
    tr -d '\r' <"$console" | sed -n 's/.*CHECK \([^ ]*\) \(pass\|FAIL\) *\(.*\)$/\1 \2 \3/p' >"$work/checks-$name"
    while read -r check result detail; do
        echo "check-kernel: $name $check: $result $detail"
        [ "$result" = pass ] || failed=1
    done <"$work/checks-$name"
    if ! grep -q CHECKS-DONE "$console"; then
        kill "$qemu" 2>/dev/null || true
        wait "$qemu" || true
        qemu=
        echo "check-kernel: $name boot: FAIL did not finish in ${done_at} s; console tail:"
        tr -d '\r' <"$console" | tail -n 20 | sed 's/^/    /'
        failed=1
        return
    fi
    if wait_exit "$qemu" "$poweroff_grace_s"; then
        echo "check-kernel: $name power-off: pass (checks done in ${done_at} s)"
    else
        kill "$qemu" 2>/dev/null || true
        echo "check-kernel: $name power-off: FAIL ($(tr -d '\r' <"$console" | grep -m1 -E 'Power off|halted' || echo 'no power-off'))"
        failed=1
    fi
    wait "$qemu" || true
    qemu=
}

boot kvm max 2
boot smt "$smt_cpu" 4,threads=2
[ "$failed" -eq 0 ] || exit "$EXIT_FAILED"
echo "check-kernel: all checks passed"
