//! `gapprobe initrd` as users run it, and its images as a real kernel unpacks them: GNU
//! cpio reads what we write, and Debian's kernel boots T from our gzip image.

#[allow(dead_code)] // shared helpers; this test uses a subset
#[path = "vbm_harness.rs"]
mod vbm_harness;

use std::fs;
use std::process::{Command, Stdio};

use vbm_harness::{gapprobe_bin, run_in_t};

/// Extracts one member with GNU cpio, an independent reader of the newc format.
fn gnu_cpio_extract(image: &std::path::Path, member: &str) -> Vec<u8> {
    let output = Command::new("cpio")
        .args(["-i", "--quiet", "--to-stdout", member])
        .stdin(fs::File::open(image).unwrap())
        .stderr(Stdio::inherit())
        .output()
        .expect("running cpio (apt-get install cpio)");
    assert!(output.status.success(), "cpio could not read {member}");
    output.stdout
}

#[test]
fn default_init_is_this_gapprobe_and_gnu_cpio_reads_the_image() {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("gapprobe.cpio");
    let extra = dir.path().join("notes.txt");
    fs::write(&extra, b"inner payload\n").unwrap();
    let output = Command::new(gapprobe_bin())
        .args(["initrd", "-o"])
        .arg(&image)
        .arg("--add")
        .arg(format!("{}=/l2/notes.txt", extra.display()))
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    assert_eq!(
        gnu_cpio_extract(&image, "init"),
        fs::read(gapprobe_bin()).unwrap()
    );
    assert_eq!(gnu_cpio_extract(&image, "l2/notes.txt"), b"inner payload\n");
}

#[test]
fn dynamic_init_is_refused_with_one_line_and_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("never.cpio");
    let output = Command::new(gapprobe_bin())
        .args(["initrd", "--init", "/bin/ls", "-o"])
        .arg(&image)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("/bin/ls"), "{stderr}");
    assert!(stderr.contains("dynamically linked"), "{stderr}");
    assert!(!image.exists(), "a refused image must leave no file");
}

#[test]
fn debian_kernel_boots_t_from_our_gzip_image() {
    // T's /init is busybox from our image; the command sees the skeleton we wrote (the
    // sticky /tmp, the /dev/console node T's init got its stdio from) and the extra file.
    let run = run_in_t(
        &["--compress", "gzip"],
        &[],
        "ls -ld /tmp; ls -l /etc/vbm/command; [ -x /bin/gapprobe ]",
        120,
    );
    let transcript = run.transcript();
    assert_eq!(run.status, Some(0), "{transcript}");
    assert!(
        run.console
            .lines()
            .any(|l| l.starts_with("drwxrwxrwt") && l.ends_with("/tmp")),
        "{transcript}"
    );
}
