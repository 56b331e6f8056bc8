//! SPDK's NVMe/TCP host tools (v24.01, prebuilt in `../shared/spdk/` beside
//! the project): a second host that shares no code with ours, so a field
//! both sides misread the same way shows up here.
//!
//! `tools()` finds them, checks that this CPU can run them, installs their
//! runtime packages if missing and reserves hugepages, once per test binary;
//! it panics with the reason when any of that is impossible.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

/// Debian 12 packages the binaries link against (../shared/spdk/README.md).
const RUNTIME_PACKAGES: &[&str] = &["libnuma1", "libuuid1", "libssl3", "libaio1", "libfuse3-3"];
/// x86-64-v2, which the binaries were built for, as /proc/cpuinfo names it.
const CPU_FLAGS: &[&str] = &["cx16", "lahf_lm", "popcnt", "sse4_1", "sse4_2", "ssse3"];
/// Hugepage memory for one SPDK process at a time (see `serial`).
const HUGEPAGES_MIB: &str = "512";

/// Where SPDK's tools are: `SPDK_DIR`, else `shared/spdk` beside the
/// project or beside the repository this checkout was cloned from (a CI
/// clone elsewhere still finds the machine's copy).
fn find() -> Option<PathBuf> {
    if let Ok(d) = std::env::var("SPDK_DIR") {
        return Some(PathBuf::from(d));
    }
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let mut candidates = vec![root.join("../shared/spdk")];
    if let Ok(out) = Command::new("git")
        .args([
            "-C",
            root.to_str().unwrap(),
            "config",
            "--get",
            "remote.origin.url",
        ])
        .output()
    {
        let url = String::from_utf8_lossy(&out.stdout).trim().to_string();
        let origin = PathBuf::from(url.trim_start_matches("file://"));
        if origin.is_absolute() {
            candidates.push(origin.join("../shared/spdk"));
        }
    }
    candidates
        .into_iter()
        .find(|c| c.join("bin/spdk_nvme_perf").exists())
}

fn check_cpu() {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let flags: Vec<&str> = info
        .lines()
        .find(|l| l.starts_with("flags"))
        .map(|l| l.split_whitespace().collect())
        .unwrap_or_default();
    let missing: Vec<&&str> = CPU_FLAGS.iter().filter(|f| !flags.contains(f)).collect();
    assert!(
        missing.is_empty(),
        "this CPU cannot run SPDK's binaries (built for x86-64-v2): it lacks {missing:?}"
    );
}

/// Install the runtime packages when the dynamic linker cannot find a library.
fn install_runtime(bin: &Path) {
    let ldd = Command::new("ldd").arg(bin).output().expect("ldd");
    if !String::from_utf8_lossy(&ldd.stdout).contains("not found") {
        return;
    }
    let st = Command::new("apt-get")
        .args(["install", "-y", "-q"])
        .args(RUNTIME_PACKAGES)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()
        .expect("apt-get");
    assert!(st.success(), "apt-get install {RUNTIME_PACKAGES:?} failed");
}

/// The directory holding `bin/spdk_nvme_*`, ready to run.
pub fn tools() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = find().unwrap_or_else(|| {
            panic!(
                "SPDK's host tools are not in ../shared/spdk beside the project \
                 (or its origin); set SPDK_DIR to the folder holding bin/spdk_nvme_perf"
            )
        });
        check_cpu();
        install_runtime(&dir.join("bin/spdk_nvme_perf"));
        let st = Command::new(dir.join("hugepages"))
            .arg(HUGEPAGES_MIB)
            .stdout(Stdio::null())
            .status()
            .expect("hugepages");
        assert!(
            st.success(),
            "could not reserve {HUGEPAGES_MIB} MiB of hugepages"
        );
        dir
    })
}

/// One SPDK process at a time: they share the hugepages.
pub fn serial() -> MutexGuard<'static, ()> {
    static M: Mutex<()> = Mutex::new(());
    M.lock().unwrap_or_else(|e| e.into_inner())
}

/// A transport ID string (`-r`): no `hostnqn` means SPDK's default, an
/// empty Host NQN.
pub fn trid(addr: SocketAddr, subnqn: Option<&str>, hostnqn: Option<&str>) -> String {
    let mut s = format!(
        "trtype:TCP adrfam:IPv4 traddr:{} trsvcid:{}",
        addr.ip(),
        addr.port()
    );
    if let Some(n) = subnqn {
        s += &format!(" subnqn:{n}");
    }
    if let Some(h) = hostnqn {
        s += &format!(" hostnqn:{h}");
    }
    s
}

/// What a tool printed (stdout and stderr together) and how it ended:
/// None when it was still running at the deadline and was stopped.
pub struct Run {
    pub code: Option<i32>,
    pub out: String,
}

/// Run `bin/TOOL ARGS` for at most `limit`.
pub fn run(tool: &str, args: &[&str], limit: Duration) -> Run {
    let _one = serial();
    let out_path = std::env::temp_dir().join(format!(
        "nvmf-tpc-spdk-{}-{:?}.out",
        std::process::id(),
        std::thread::current().id()
    ));
    let file = std::fs::File::create(&out_path).unwrap();
    let mut child = Command::new(tools().join("bin").join(tool))
        .args(args)
        .stdin(Stdio::null())
        .stdout(file.try_clone().unwrap())
        .stderr(file)
        .spawn()
        .unwrap_or_else(|e| panic!("{tool}: {e}"));
    let deadline = Instant::now() + limit;
    let code = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st.code();
        }
        if Instant::now() > deadline {
            // SIGTERM first: SPDK then flushes what it printed to the file.
            // SAFETY: a signal to our own child.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let grace = Instant::now() + Duration::from_secs(5);
            while child.try_wait().unwrap().is_none() && Instant::now() < grace {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let out = std::fs::read_to_string(&out_path).unwrap_or_default();
    let _ = std::fs::remove_file(&out_path);
    Run { code, out }
}

/// The value printed after `key:` on its first line in identify's output.
pub fn field<'a>(out: &'a str, key: &str) -> Option<&'a str> {
    out.lines()
        .find_map(|l| l.trim_start().strip_prefix(key)?.strip_prefix(':'))
        .map(str::trim)
}
