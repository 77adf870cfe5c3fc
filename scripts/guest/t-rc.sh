#!/bin/sh
# /etc/rc of T, the virtual bare metal (run by busybox init, see busybox-inittab).
# Mounts the basics, loads KVM from the kernel package's modules, runs the harness's
# command (/etc/vbm/command) and reports its status on the console before powering off.
# Lines starting with VBM- are read by scripts/vbm.sh; keep their format stable.

/bin/busybox --install -s /bin
# /usr/bin: where --with-qemu puts QEMU.
export PATH=/bin:/usr/bin

uptime_s() { read -r up _ </proc/uptime; echo "$up"; }

finish() {
    echo "$1"
    # Give the UART time to drain: poweroff -f does not flush the console.
    sleep 0.2
    poweroff -f
}

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/shm && mount -t tmpfs -o mode=1777 tmpfs /dev/shm

# Dependency order: kvm needs irqbypass, kvm-amd needs kvm.
for module in irqbypass kvm kvm-amd; do
    if ! err=$(insmod "/lib/modules/vbm/$module.ko" 2>&1); then
        finish "VBM-SETUP-FAILED: insmod $module.ko: $err"
    fi
done
[ -c /dev/kvm ] || finish "VBM-SETUP-FAILED: kvm-amd loaded but /dev/kvm is missing"

echo "VBM-T-READY uptime=$(uptime_s)"
cd /
start=$(uptime_s)
sh /etc/vbm/command
status=$?
finish "VBM-RESULT: status=$status command_seconds=$(echo "$(uptime_s) $start" | awk '{printf "%.2f", $1 - $2}') uptime=$(uptime_s)"
