#!/bin/sh
# Runs inside T (tests/vbm_bisect.rs, needs scripts/vbm.sh --with-git): a real `git bisect
# run` of `gapprobe bisect-run` over a synthetic repository of six commits whose "kernel"
# is $KERNEL (the `build` script prints its path; default T's own, /boot/vmlinuz) and whose
# `max-gap` file is the detector threshold: 30s (no gap in a 3 s run: good) for c1-c3 and
# 1ms (a gap within seconds in an emulated L1: bad) from c4 on. c1 is marked good and c6
# bad, so git tests c3, c5 and c4 and must name c4.
# usage (in T): [KERNEL=PATH] sh /etc/vbm/bisect.sh
# Lines starting with VBM-BISECT- are read by the test.

export HOME=/tmp GIT_CONFIG_NOSYSTEM=1 GIT_PAGER=cat
export GIT_AUTHOR_NAME=gapprobe GIT_AUTHOR_EMAIL=gapprobe@example.com
export GIT_COMMITTER_NAME=gapprobe GIT_COMMITTER_EMAIL=gapprobe@example.com
FIRST_BAD=4
COMMITS=6
# What each step runs: one short run per revision, a 2-vCPU L1 as in tests/vbm_vm.rs
# (small trace buffers: allocating them is slow in an emulated L1; --quiet keeps T's
# console, which costs time per character, short).
# shellcheck disable=SC2016 # $(cat max-gap) is read by each step, in the revision's tree
STEP='gapprobe bisect-run --build ./build --repeat 1 --duration 3s -- --max-gap "$(cat max-gap)" --vcpus 2 --threads-per-core 2 --boot-timeout 200s --buffer-kb 2048 --quiet'

repo=/tmp/kernel
git init -q --template= "$repo" && cd "$repo" || exit 1
printf '#!/bin/sh\necho %s\n' "${KERNEL:-/boot/vmlinuz}" >build
chmod +x build
n=1
while [ "$n" -le "$COMMITS" ]; do
    if [ "$n" -lt "$FIRST_BAD" ]; then verdict=good gap=30s; else verdict=bad gap=1ms; fi
    echo "$gap" >max-gap
    echo "change $n" >change
    git add build max-gap change && git commit -q -m "c$n" || exit 1
    echo "VBM-BISECT-COMMIT $(git rev-parse --short HEAD) $verdict"
    [ "$n" -eq "$FIRST_BAD" ] && echo "VBM-BISECT-EXPECTED $(git rev-parse HEAD)"
    n=$((n + 1))
done

git bisect start HEAD "HEAD~$((COMMITS - 1))" || exit 1
git bisect run sh -c "$STEP"
echo "VBM-BISECT-RUN-STATUS $?"
echo "VBM-BISECT-FOUND $(git rev-parse --verify -q refs/bisect/bad)"
gapprobe bisect-run --summary >/tmp/summary
echo "VBM-BISECT-SUMMARY-STATUS $?"
sed 's/^/VBM-BISECT-SUMMARY /' /tmp/summary
# T's busybox has no pgrep: count processes named gapprobe through /proc.
echo "VBM-BISECT-LEFT $(cat /proc/[0-9]*/comm 2>/dev/null | grep -c '^gapprobe$')"
exit 0
