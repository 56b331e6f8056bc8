//! Shared test harness: runs the real `nvmf-tpc` binary on a free loopback
//! port and drives it with the host library inside a glommio executor.
#![allow(dead_code)]

pub mod devices;
pub mod logwrites;
pub mod raw;
pub mod spdk;
pub mod trace;

use std::io::{BufRead, BufReader, Read};
use std::net::{SocketAddr, TcpListener};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const NQN: &str = "nqn.2026-11.io.nvmf-tpc:test";

/// The NVMe status of a command that must fail with one.
pub fn status_of<T: std::fmt::Debug>(
    r: Result<T, nvmf_tpc::host::HostError>,
) -> nvmf_tpc::wire::status::Status {
    match r {
        Err(e) => e.status().unwrap_or_else(|| panic!("not a status: {e:?}")),
        Ok(v) => panic!("expected an error status, got {v:?}"),
    }
}

/// Deterministic test data (xorshift): the same `seed` gives the same bytes.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// A fresh directory under target/ (a disk file system with O_DIRECT, not tmpfs).
pub fn scratch_dir(name: &str) -> std::path::PathBuf {
    let d = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Create (or truncate) a sparse file of `size` bytes.
pub fn sparse_file(path: &std::path::Path, size: u64) {
    std::fs::File::create(path)
        .and_then(|f| f.set_len(size))
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
}

/// A free TCP port on 127.0.0.1 (bound once, then released).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub struct Target {
    child: Option<Child>,
    pub addr: SocketAddr,
    pub stdout: Arc<Mutex<String>>,
    pub stderr: Arc<Mutex<String>>,
    /// The threads copying stdout and stderr; they end when the pipes close.
    pumps: Vec<std::thread::JoinHandle<()>>,
}

fn pump(r: impl Read + Send + 'static, into: Arc<Mutex<String>>) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut r = BufReader::new(r);
        let mut line = String::new();
        while r.read_line(&mut line).map(|n| n > 0).unwrap_or(false) {
            into.lock().unwrap().push_str(&line);
            line.clear();
        }
    })
}

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_nvmf-tpc")
}

impl Target {
    /// Start `nvmf-tpc serve ARGS --listen 127.0.0.1:<free>` and wait until it
    /// prints its banner. Panics (with its output) if it does not start.
    pub fn start(args: &[&str]) -> Target {
        match Target::try_start(args) {
            Ok(t) => t,
            Err((status, out)) => panic!("target did not start ({status:?}):\n{out}"),
        }
    }

    pub fn start_in(dir: &std::path::Path, args: &[&str]) -> Target {
        match Target::spawn(dir, args, &[]) {
            Ok(t) => t,
            Err((status, out)) => panic!("target did not start ({status:?}):\n{out}"),
        }
    }

    pub fn try_start(args: &[&str]) -> Result<Target, (Option<ExitStatus>, String)> {
        Target::spawn(&std::env::temp_dir(), args, &[])
    }

    /// Start with extra environment variables (fault injection, src/fault.rs);
    /// an empty value unsets one.
    pub fn start_env(args: &[&str], env: &[(&str, &str)]) -> Target {
        match Target::spawn(&std::env::temp_dir(), args, env) {
            Ok(t) => t,
            Err((status, out)) => panic!("target did not start ({status:?}):\n{out}"),
        }
    }

    fn spawn(
        dir: &std::path::Path,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Result<Target, (Option<ExitStatus>, String)> {
        let port = free_port();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let mut cmd = Command::new(bin());
        cmd.arg("serve").current_dir(dir);
        if !args.contains(&"--listen") {
            cmd.args(["--listen", &addr.to_string()]);
        }
        cmd.args(args)
            .env(
                "RUST_LOG",
                std::env::var("TARGET_LOG").unwrap_or_else(|_| "debug".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        // An empty value unsets the variable (RUST_LOG: the default level).
        for (k, v) in env {
            if v.is_empty() {
                cmd.env_remove(k);
            } else {
                cmd.env(k, v);
            }
        }
        let mut child = cmd.spawn().expect("spawn nvmf-tpc");
        let stdout = Arc::new(Mutex::new(String::new()));
        let stderr = Arc::new(Mutex::new(String::new()));
        let pumps = vec![
            pump(child.stdout.take().unwrap(), stdout.clone()),
            pump(child.stderr.take().unwrap(), stderr.clone()),
        ];
        let mut t = Target {
            child: Some(child),
            addr,
            stdout,
            stderr,
            pumps,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if t.stdout.lock().unwrap().contains("listening on") {
                return Ok(t);
            }
            if let Some(st) = t.child.as_mut().unwrap().try_wait().unwrap() {
                t.join_pumps();
                let out = t.output();
                t.child = None;
                return Err((Some(st), out));
            }
            if Instant::now() > deadline {
                let out = t.output();
                return Err((None, out));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    pub fn output(&self) -> String {
        format!(
            "--- stdout\n{}--- stderr\n{}",
            self.stdout.lock().unwrap(),
            self.stderr.lock().unwrap()
        )
    }

    pub fn log(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Wait up to `timeout` for the log to contain `pat`.
    pub fn wait_log(&self, pat: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.log().contains(pat) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    pub fn signal(&self, sig: i32) {
        if let Some(c) = &self.child {
            unsafe {
                libc::kill(c.id() as i32, sig);
            }
        }
    }

    /// SIGTERM and wait for the exit status.
    pub fn stop(mut self) -> ExitStatus {
        self.stop_mut()
    }

    fn stop_mut(&mut self) -> ExitStatus {
        self.signal(libc::SIGTERM);
        let mut c = self.child.take().unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(st) = c.try_wait().unwrap() {
                return st;
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                panic!("target did not stop on SIGTERM:\n{}", self.output());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM, wait for the exit status, and return it with all output.
    pub fn stop_with_output(mut self) -> (ExitStatus, String) {
        let st = self.stop_mut();
        self.join_pumps();
        (st, self.output())
    }

    /// Wait until every line the process wrote has been read (its pipes
    /// closed, so it has exited or closed them).
    fn join_pumps(&mut self) {
        for p in self.pumps.drain(..) {
            p.join().unwrap();
        }
    }

    pub fn kill9(mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
            if std::thread::panicking() {
                eprintln!("target output:\n{}", self.output());
            }
        }
    }
}

/// Run `f` inside a fresh glommio executor and return its result.
pub fn run<F, Fut, T>(f: F) -> T
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = T> + 'static,
    T: Send + 'static,
{
    glommio::LocalExecutorBuilder::default()
        .spawn(f)
        .expect("executor")
        .join()
        .expect("host executor panicked")
}
