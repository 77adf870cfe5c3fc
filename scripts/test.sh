#!/bin/bash
# The project's test command (the README's second line; .ci/run calls it after installing
# the packages the tests need). Runs as root: the tests use the real tracefs, SCHED_FIFO,
# /dev/kvm and QEMU.
set -euo pipefail
cd "$(dirname "$0")/.."

[ "$(id -u)" = 0 ] || { echo "scripts/test.sh: run as root (real tracefs, SCHED_FIFO, /dev/kvm)" >&2; exit 2; }

echo "== format and lints"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --release -- -D warnings

echo "== kernel under test: build with kernels/gapprobe.config (cached), check under QEMU"
cache=${GAPPROBE_TEST_CACHE:-/var/cache/gapprobe-test}
image=$(nice -n 10 scripts/build-kernel.sh "$cache/linux-source-6.12")
scripts/check-kernel.sh "$image"

echo "== tests (unit, real-machine, virtual bare metal)"
# Release: the detector's timing behaviour is the one users get. One test binary at a time
# keeps the CPU-bound tests of different crates from disturbing each other.
cargo test --workspace --release -- --test-threads=1
