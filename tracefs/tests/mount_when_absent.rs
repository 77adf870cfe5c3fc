//! `Tracefs::open()` when tracefs is not mounted: in a private mount namespace (so the machine's
//! mounts are untouched) every tracefs and debugfs mount is detached, then open() must mount
//! tracefs itself as root, fall back to debugfs's `tracing` directory, and fail with `NotRoot`
//! for a non-root user. A plain `main` (harness = false) keeps the process single-threaded, which
//! unshare(CLONE_NEWNS) and seteuid need to act on the whole process. Needs root; fails without.

use std::ffi::CString;
use std::fs;
use std::path::{Path, PathBuf};

use tracefs::{Tracefs, TracefsError, DEFAULT_TRACEFS_MOUNT};

/// The uid of `nobody` on Debian.
const NOBODY_UID: libc::uid_t = 65534;

fn main() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "this test mounts filesystems and must run as root (euid is {euid})"
    );
    enter_private_mount_namespace();

    detach_all(&["tracefs", "debugfs"]);
    let tracefs = Tracefs::open().expect("open() mounts tracefs when root");
    assert_eq!(tracefs.root(), Path::new(DEFAULT_TRACEFS_MOUNT));
    assert_eq!(
        mount_points("tracefs"),
        vec![PathBuf::from(DEFAULT_TRACEFS_MOUNT)]
    );
    println!("ok: open() mounted tracefs at {DEFAULT_TRACEFS_MOUNT}");
    tracefs
        .unmount_if_mounted_here()
        .expect("unmount what open() mounted");
    assert!(mount_points("tracefs").is_empty(), "tracefs left mounted");
    println!("ok: unmount_if_mounted_here() restored the mount table");

    let debugfs = tempfile::tempdir().unwrap();
    mount("debugfs", debugfs.path());
    let tracefs = Tracefs::open().expect("open() falls back to debugfs/tracing");
    assert_eq!(tracefs.root(), debugfs.path().join("tracing"));
    assert!(tracefs.root().join("trace").exists());
    println!("ok: open() used {}", tracefs.root().display());

    detach_all(&["tracefs", "debugfs"]);
    set_euid(NOBODY_UID);
    match Tracefs::open() {
        Err(TracefsError::NotRoot { path, .. }) => {
            assert_eq!(path, Path::new(DEFAULT_TRACEFS_MOUNT))
        }
        other => panic!("expected NotRoot, got {other:?}"),
    }
    println!("ok: open() as uid {NOBODY_UID} without tracefs gives NotRoot");

    set_euid(0);
    mount("tracefs", Path::new(DEFAULT_TRACEFS_MOUNT));
    set_euid(NOBODY_UID);
    match Tracefs::open() {
        Err(e @ TracefsError::NotRoot { .. }) => println!("ok: open() as uid {NOBODY_UID}: {e}"),
        other => panic!("expected NotRoot for a root-only tracefs, got {other:?}"),
    }
    set_euid(0);
}

/// Changes the effective uid; the saved uid stays root, so root can be taken back.
fn set_euid(uid: libc::uid_t) {
    // SAFETY: single-threaded process; only the effective uid changes.
    assert_eq!(
        unsafe { libc::seteuid(uid) },
        0,
        "seteuid({uid}): {}",
        errno()
    );
}

fn enter_private_mount_namespace() {
    // SAFETY: plain system calls on a single-threaded process; pointers are static C strings.
    unsafe {
        assert_eq!(libc::unshare(libc::CLONE_NEWNS), 0, "unshare: {}", errno());
        let rc = libc::mount(
            std::ptr::null(),
            c"/".as_ptr(),
            std::ptr::null(),
            libc::MS_REC | libc::MS_PRIVATE,
            std::ptr::null(),
        );
        assert_eq!(rc, 0, "making mounts private: {}", errno());
    }
}

/// Mount points of `fstype` in this namespace, in mount order.
fn mount_points(fstype: &str) -> Vec<PathBuf> {
    fs::read_to_string("/proc/self/mounts")
        .unwrap()
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            (fields.get(2) == Some(&fstype)).then(|| PathBuf::from(fields[1]))
        })
        .collect()
}

fn detach_all(fstypes: &[&str]) {
    for fstype in fstypes {
        for point in mount_points(fstype).iter().rev() {
            let path = CString::new(point.as_os_str().as_encoded_bytes()).unwrap();
            // SAFETY: valid C string; MNT_DETACH only affects this private namespace.
            let rc = unsafe { libc::umount2(path.as_ptr(), libc::MNT_DETACH) };
            assert_eq!(rc, 0, "umount {}: {}", point.display(), errno());
        }
        assert!(mount_points(fstype).is_empty(), "{fstype} still mounted");
    }
}

fn mount(fstype: &str, dir: &Path) {
    let target = CString::new(dir.as_os_str().as_encoded_bytes()).unwrap();
    let fstype = CString::new(fstype).unwrap();
    // SAFETY: valid NUL-terminated strings for the duration of the call.
    let rc = unsafe {
        libc::mount(
            c"nodev".as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    assert_eq!(rc, 0, "mount {fstype:?} at {}: {}", dir.display(), errno());
}

fn errno() -> std::io::Error {
    std::io::Error::last_os_error()
}
