#!/bin/bash
# Writes a test initramfs whose /init is busybox-static running RC_SCRIPT as /etc/rc,
# with `gapprobe initrd` (which checks that busybox is static).
# usage: scripts/busybox-initrd.sh OUT RC_SCRIPT [SRC=DEST]...
# env: GAPPROBE (default: the release build), BUSYBOX (default: busybox on PATH),
#      COMPRESS (gzip|none, default none)
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
[ $# -ge 2 ] || { echo "usage: $0 OUT RC_SCRIPT [SRC=DEST]..." >&2; exit 2; }
out=$1 rc=$2
shift 2
gapprobe=${GAPPROBE:-$here/../target/x86_64-unknown-linux-gnu/release/gapprobe}
busybox=${BUSYBOX:-$(command -v busybox || true)}
[ -x "$gapprobe" ] || { echo "busybox-initrd: no gapprobe at $gapprobe (cargo build --release)" >&2; exit 2; }
[ -n "$busybox" ] || { echo "busybox-initrd: busybox not found (apt-get install busybox-static)" >&2; exit 2; }

adds=(--add "$busybox=/bin/busybox" --add "$here/guest/busybox-inittab=/etc/inittab" --add "$rc=/etc/rc")
for extra in "$@"; do
    adds+=(--add "$extra")
done
# BusyBox picks the applet from argv[0]: as /init it is `init`, which reads /etc/inittab.
exec "$gapprobe" initrd -o "$out" --init "$busybox" --compress "${COMPRESS:-none}" "${adds[@]}"
