//! The kernel's own record of what the target asked of it: a tracefs
//! instance (its own buffer, events and filters, so tests running at once
//! do not see each other's) with chosen tracepoints. An oracle the target
//! does not share: it sees the system calls io_uring and the blocking pool
//! make, which strace does not.

use std::path::{Path, PathBuf};

const TRACEFS: &str = "/sys/kernel/tracing";

pub struct Trace {
    dir: PathBuf,
}

fn write(p: &Path, v: &str) {
    std::fs::write(p, v).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
}

/// Mount tracefs where the kernel expects it, if nothing has.
fn tracefs() -> PathBuf {
    let root = PathBuf::from(TRACEFS);
    if !root.join("instances").exists() {
        let _ = std::process::Command::new("mount")
            .args(["-t", "tracefs", "nodev", TRACEFS])
            .status();
    }
    assert!(
        root.join("instances").exists(),
        "tracefs is needed at {TRACEFS} (run as root)"
    );
    root
}

impl Trace {
    /// Start tracing `events` ("group/name", with a filter expression or
    /// ""), in an instance of its own named after `name`.
    pub fn start(name: &str, events: &[(&str, &str)]) -> Trace {
        let dir = tracefs()
            .join("instances")
            .join(format!("nvmf-tpc-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir(&dir);
        std::fs::create_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        write(&dir.join("buffer_size_kb"), "4096");
        // CLOCK_MONOTONIC, so that events can be placed among a test's own
        // clock_gettime readings (see `mono_now`).
        write(&dir.join("trace_clock"), "mono");
        for (ev, filter) in events {
            let e = dir.join("events").join(ev);
            if !filter.is_empty() {
                write(&e.join("filter"), filter);
            }
            write(&e.join("enable"), "1");
        }
        write(&dir.join("tracing_on"), "1");
        Trace { dir }
    }

    /// Is `event` ("group/name") a tracepoint of this kernel?
    pub fn has(event: &str) -> bool {
        tracefs().join("events").join(event).exists()
    }

    /// Every event recorded so far, one per line ("comm-tid [cpu] ... name: fields").
    pub fn lines(&self) -> Vec<String> {
        std::fs::read_to_string(self.dir.join("trace"))
            .unwrap()
            .lines()
            .filter(|l| !l.starts_with('#'))
            .map(str::to_string)
            .collect()
    }

    /// Events named `name` recorded so far.
    pub fn count(&self, name: &str) -> usize {
        let tag = format!(" {name}:");
        self.lines().iter().filter(|l| l.contains(&tag)).count()
    }

    /// When each event named `name` happened, in seconds of CLOCK_MONOTONIC,
    /// in order.
    pub fn times(&self, name: &str) -> Vec<f64> {
        let tag = format!(" {name}:");
        self.lines()
            .iter()
            .filter_map(|l| {
                let before = &l[..l.find(&tag)?];
                before
                    .split_whitespace()
                    .last()?
                    .trim_end_matches(':')
                    .parse()
                    .ok()
            })
            .collect()
    }

    /// Forget what was recorded.
    pub fn clear(&self) {
        write(&self.dir.join("trace"), "");
    }
}

impl Drop for Trace {
    fn drop(&mut self) {
        let _ = std::fs::write(self.dir.join("tracing_on"), "0");
        // Removing an instance disables its events and frees its buffer.
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// CLOCK_MONOTONIC now, in seconds: the clock of `Trace::times`.
pub fn mono_now() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec into `ts`.
    assert_eq!(
        unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) },
        0
    );
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}
