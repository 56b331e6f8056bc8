//! Exclusive claims on backings. Two targets writing one file or device
//! undo each other's acknowledged writes, so a backing is claimed before
//! anything reads or writes it, and the claim is held until the process
//! exits: an advisory `flock` on files and device nodes (which names the
//! holder in /proc/locks), and O_EXCL on block devices, the kernel's own
//! claim that also refuses a mounted device or one another exclusive
//! opener (a file system, md, dm, the kernel target) holds. SPDK's bdev
//! claims and nvmet's exclusive open serve the same purpose.

use std::fs::File;
use std::io;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::Path;
use std::sync::Mutex;

/// Claims held by this process; never released before exit (the kernel
/// drops them with the process, however it ends).
static HELD: Mutex<Vec<File>> = Mutex::new(Vec::new());

/// Open `path` read-write with O_DIRECT and claim it for this process.
/// The returned handle is used for probing; the claim stays held after it
/// is dropped.
pub fn claim(path: &Path, is_block: bool) -> Result<File, String> {
    let mut flags = libc::O_DIRECT;
    if is_block {
        flags |= libc::O_EXCL;
    }
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(flags)
        .open(path)
        .map_err(|e| open_error(path, is_block, e))?;
    // SAFETY: flock on a descriptor we own.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
            return Err(format!("{}: {}", path.display(), in_use(path)));
        }
        return Err(format!("{}: cannot lock: {e}", path.display()));
    }
    let held = f
        .try_clone()
        .map_err(|e| format!("{}: {e}", path.display()))?;
    HELD.lock().unwrap_or_else(|p| p.into_inner()).push(held);
    if !is_block && on_tmpfs(&f) {
        // tmpfs takes O_DIRECT since Linux 6.6, but its "stable storage" is
        // memory: Flush and FUA succeed and the data still ends at reboot.
        log::warn!(
            "{}: on tmpfs: its data lives in memory and is lost at reboot, whatever Flush and FUA report",
            path.display()
        );
    }
    Ok(f)
}

/// Is `f` on tmpfs (statfs(2): TMPFS_MAGIC)?
fn on_tmpfs(f: &File) -> bool {
    const TMPFS_MAGIC: i64 = 0x0102_1994;
    // SAFETY: fstatfs fills the statfs we pass, for a descriptor we own.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    unsafe { libc::fstatfs(f.as_raw_fd(), &mut st) == 0 && st.f_type as i64 == TMPFS_MAGIC }
}

fn open_error(path: &Path, is_block: bool, e: io::Error) -> String {
    match e.raw_os_error() {
        Some(libc::EBUSY) if is_block => format!(
            "{}: {}; a device that is mounted or held by the kernel (a file system, md, dm, nvmet) cannot be served",
            path.display(),
            in_use(path)
        ),
        Some(libc::EINVAL) => format!(
            "{}: the file system does not support O_DIRECT (ramfs, or tmpfs before Linux 6.6?); put the file on a disk file system",
            path.display()
        ),
        _ => format!("{}: cannot open read-write with O_DIRECT: {e}", path.display()),
    }
}

/// "in use by ...", naming the process that holds a lock on `path` when
/// /proc/locks tells.
fn in_use(path: &Path) -> String {
    match holder(path) {
        Some((pid, cmd)) => format!("in use by process {pid} ({cmd})"),
        None => "in use by another holder".to_string(),
    }
}

/// The pid and command line of a process holding a flock on `path`.
fn holder(path: &Path) -> Option<(u32, String)> {
    let meta = std::fs::metadata(path).ok()?;
    let dev = meta.dev();
    let key = format!(
        "{:02x}:{:02x}:{}",
        libc::major(dev),
        libc::minor(dev),
        meta.ino()
    );
    let locks = std::fs::read_to_string("/proc/locks").ok()?;
    let pid = holder_pid(&locks, &key)?;
    let cmd = std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| {
            let s: Vec<String> = b
                .split(|&c| c == 0)
                .filter(|a| !a.is_empty())
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect();
            s.join(" ")
        })
        .unwrap_or_default();
    Some((pid, cmd))
}

/// The pid of a FLOCK line of /proc/locks on `key` (maj:min:inode, as the
/// kernel prints it: "1: FLOCK  ADVISORY  WRITE 1234 fd:00:5678 0 EOF").
fn holder_pid(locks: &str, key: &str) -> Option<u32> {
    locks.lines().find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        // Blocked waiters are printed with "->" before the lock type.
        (f.len() >= 6 && f[1] == "FLOCK" && f[5] == key)
            .then(|| f[4].parse().ok())
            .flatten()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_locks_lines() {
        let locks = "1: POSIX  ADVISORY  WRITE 77 fd:00:12 0 EOF\n\
                     2: FLOCK  ADVISORY  WRITE 4321 fd:00:5678 0 EOF\n\
                     3: FLOCK  ADVISORY  WRITE 99 07:02:5678 0 EOF\n";
        assert_eq!(holder_pid(locks, "fd:00:5678"), Some(4321));
        assert_eq!(holder_pid(locks, "07:02:5678"), Some(99));
        assert_eq!(
            holder_pid(locks, "fd:00:12"),
            None,
            "POSIX locks are not ours"
        );
        assert_eq!(holder_pid(locks, "fd:00:1"), None);
    }

    #[test]
    fn a_second_claim_is_refused_with_the_holder_named() {
        let dir = std::env::temp_dir().join(format!("claim-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("b.img");
        std::fs::File::create(&p).unwrap().set_len(1 << 20).unwrap();
        // tmpfs refuses O_DIRECT; this unit test needs a disk file system.
        match claim(&p, false) {
            Err(e) if e.contains("O_DIRECT") => return,
            r => {
                r.unwrap();
            }
        }
        let e = claim(&p, false).unwrap_err();
        assert!(
            e.contains(&format!("process {}", std::process::id())),
            "{e}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
