//! Issue 3's virtual-bare-metal test: inside T (Debian's cloud kernel under QEMU TCG, with a
//! real /dev/kvm from kvm-amd on emulated SVM), `gapprobe boot` boots the same Debian kernel
//! with 4 vCPUs as 2 cores x 2 threads and a busybox initramfs that reports what it sees
//! (scripts/guest/inner-report.sh) and writes a pattern into the dump region; T then checks
//! the dump file (scripts/guest/t-boot-check.sh). Everything is asserted here, outside.

#[path = "vbm_harness.rs"]
mod vbm_harness;

use vbm_harness::{busybox_initrd, run_in_t, workspace_root};

/// T boot ~5 s, inner boot ~15 s (DESIGN.md); generous for a loaded CI machine.
const T_TIMEOUT_S: u32 = 300;

#[test]
fn gapprobe_boot_shows_smt_pairs_and_fills_the_dump_region() {
    let dir = tempfile::tempdir().unwrap();
    let inner = dir.path().join("inner.cpio");
    busybox_initrd(&inner, "inner-report.sh", &[]);
    let check = workspace_root().join("scripts/guest/t-boot-check.sh");
    let run = run_in_t(
        &[],
        &[
            format!("{}=/inner.cpio", inner.display()),
            format!("{}=/etc/vbm/boot-check.sh", check.display()),
        ],
        "sh /etc/vbm/boot-check.sh",
        T_TIMEOUT_S,
    );
    let transcript = run.transcript();

    assert_eq!(
        run.after("VBM-BOOT-STATUS"),
        Some("0"),
        "gapprobe boot did not exit 0 inside T\n{transcript}"
    );
    assert_eq!(
        run.after("INNER-NPROC"),
        Some("4"),
        "the guest's nproc\n{transcript}"
    );
    let siblings: Vec<&str> = (0..4)
        .map(|cpu| {
            run.after(&format!("INNER-SIBLINGS cpu{cpu} "))
                .unwrap_or("(no line)")
        })
        .collect();
    assert_eq!(
        siblings,
        ["0-1", "0-1", "2-3", "2-3"],
        "thread_siblings_list of cpu0..3\n{transcript}"
    );
    assert!(
        run.after("INNER-DUMP-WRITTEN").is_some(),
        "the guest did not write the dump region\n{transcript}"
    );
    assert!(
        run.after("VBM-DUMP pattern found").is_some(),
        "the pattern is not in T's /dev/shm/log\n{transcript}"
    );
    assert_eq!(run.status, Some(0), "harness status\n{transcript}");
}
