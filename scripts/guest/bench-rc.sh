#!/bin/sh
# /etc/rc of the boot benchmark's guest: one marker line as soon as userspace runs, then
# power off. The time from VMM start to this line is "boot to init".
echo BENCH-INIT
/bin/busybox poweroff -f
