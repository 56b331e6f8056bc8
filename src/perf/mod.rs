//! `nvmf-tpc perf`: a thread-per-core load generator for any NVMe/TCP target,
//! built on the host library (`crate::host`).
//!
//! Shape: one pinned glommio executor per client CPU ([`worker`]), each with
//! its own controller and `--queues` I/O queues, and `--qd` tasks per queue,
//! each looping submit → await → record into the core's own counters and
//! latency histogram. No I/O touches anything shared. The main thread sets
//! one timeline for every core (warm-up, then whole seconds up to the end);
//! at each of its events every core sends its counters over a channel, and
//! the main thread merges them: the live line per second, and after the
//! run the summary (IOPS, MiB/s, latency percentiles and text histogram from
//! the merged histogram, client CPU time per I/O from getrusage, target CPU
//! time per I/O from /proc/PID/stat with `--target-pid`), optionally as JSON.
//!
//! `--idle SECS` connects the same way and holds the queues idle instead,
//! reporting the target's CPU use over that window.
//!
//! Exit status: 0 on success; 1 when the target returned any error status,
//! a short read, a dead connection, or no I/O completed; 2 for bad flags.

mod collect;
use collect::{cpu_sample, measured_seconds, Collect};
mod report;
use report::{print_header, report_idle, Report};
mod stats;
mod sys;
mod worker;

use crate::config::{parse_duration, parse_size, DEFAULT_SUBSYSTEM_NQN};
use crate::host::{uuid_hostnqn, HostConfig, DEFAULT_HOSTID};
use crate::wire::pdu::Digests;
use clap::{Args, FromArgMatches, ValueEnum};
use serde_json::{json, Value};
use stats::{grouped, latency_json, log_rows, num, rows_json, text_histogram, Interval, Latency};
use std::collections::BTreeMap;
use std::net::ToSocketAddrs;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};
use worker::{Geometry, Shape};

/// Access pattern.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Rw {
    /// Sequential reads.
    Read,
    /// Sequential writes.
    Write,
    /// Uniformly random reads.
    #[value(name = "randread")]
    RandRead,
    /// Uniformly random writes.
    #[value(name = "randwrite")]
    RandWrite,
    /// Random reads and writes, --mix percent reads.
    #[value(name = "randrw")]
    RandRw,
}

impl Rw {
    fn name(self) -> &'static str {
        match self {
            Rw::Read => "read",
            Rw::Write => "write",
            Rw::RandRead => "randread",
            Rw::RandWrite => "randwrite",
            Rw::RandRw => "randrw",
        }
    }
    fn random(self) -> bool {
        matches!(self, Rw::RandRead | Rw::RandWrite | Rw::RandRw)
    }
    fn reads(self) -> bool {
        matches!(self, Rw::Read | Rw::RandRead | Rw::RandRw)
    }
}

#[derive(Args, Debug, Clone)]
#[command(after_help = "\
Examples:
  nvmf-tpc perf --rw randread --bs 4K --qd 32 --time 10
  nvmf-tpc perf --target 10.0.0.2:4420 --nqn nqn.2026-11.io.example:db --rw randrw --mix 70 --cpus 2-3
  nvmf-tpc perf --idle 10 --target-pid $(pidof nvmf-tpc)     # target CPU use while connected and idle

Exit status: 0 when every I/O succeeded; 1 on any error status, short read or
lost connection (errors are counted and listed), or when nothing completed; 2 on bad flags.")]
pub struct PerfArgs {
    /// NVMe/TCP target to drive.
    #[arg(long, value_name = "ADDR:PORT", default_value = "127.0.0.1:4420")]
    pub target: String,
    /// Subsystem NQN to connect to.
    #[arg(long, value_name = "NQN", default_value = DEFAULT_SUBSYSTEM_NQN)]
    pub nqn: String,
    /// Access pattern.
    #[arg(long, value_enum, default_value_t = Rw::RandRead)]
    pub rw: Rw,
    /// Percentage of reads for randrw.
    #[arg(long, value_name = "N", default_value_t = 70,
          value_parser = clap::value_parser!(u8).range(0..=100))]
    pub mix: u8,
    /// Bytes per I/O (K, M suffixes), a multiple of the namespace block size.
    #[arg(long, value_name = "SIZE", default_value = "4K")]
    pub bs: String,
    /// Commands in flight per I/O queue (capped by the target's queue size).
    #[arg(long, value_name = "N", default_value_t = 32,
          value_parser = clap::value_parser!(u16).range(1..=4095))]
    pub qd: u16,
    /// I/O queues (TCP connections) per client core.
    #[arg(long, value_name = "N", default_value_t = 1,
          value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub queues: u16,
    /// Client cores, one pinned executor and one controller each [default: 1, on the last CPU allowed].
    #[arg(long, value_name = "N")]
    pub cores: Option<usize>,
    /// Exact client CPUs, e.g. "1" or "2-3" (with --cores: the first N of them).
    #[arg(long, value_name = "LIST")]
    pub cpus: Option<String>,
    /// Seconds measured (fractions allowed).
    #[arg(long, value_name = "SECS", default_value_t = 10.0)]
    pub time: f64,
    /// Seconds of load before measuring (not counted).
    #[arg(long, value_name = "SECS", default_value_t = 1.0)]
    pub warmup: f64,
    /// Namespace ID.
    #[arg(long, value_name = "NSID", default_value_t = 1)]
    pub ns: u32,
    /// Bytes of the namespace used, from LBA 0 [default: the whole namespace, from Identify Namespace].
    #[arg(long, value_name = "SIZE")]
    pub range: Option<String>,
    /// Ask for header and data digests (CRC32C).
    #[arg(long)]
    pub digest: bool,
    /// Also write the results as JSON to FILE.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Host NQN [default: the UUID NQN of the built-in host ID].
    #[arg(long, value_name = "NQN")]
    pub hostnqn: Option<String>,
    /// Connect every queue, hold it idle for SECS (no I/O), disconnect; with
    /// --target-pid reports the target's CPU use over that window.
    #[arg(long, value_name = "SECS")]
    pub idle: Option<f64>,
    /// Process ID of the target, to report its CPU time per I/O (or, with
    /// --idle, its CPU use) from /proc/PID/stat.
    #[arg(long, value_name = "PID")]
    pub target_pid: Option<u32>,
    /// How long a client core keeps polling its sockets and its ring after
    /// the last data before it sleeps (e.g. 0, 50us, 1ms), as the target's
    /// --idle-poll. Polling saves a wake-up per response; 0 measures a host
    /// that sleeps at once.
    #[arg(long, value_name = "DURATION", default_value = "50us")]
    pub idle_poll: String,
    /// No live line per second.
    #[arg(long)]
    pub quiet: bool,
    /// Log level: error, warn, info, debug, trace (RUST_LOG overrides).
    #[arg(long, value_name = "LEVEL", default_value = "warn")]
    pub log_level: String,
}

/// The command-line definition, for `--help` from main.
pub fn command() -> clap::Command {
    PerfArgs::augment_args(clap::Command::new("perf"))
}

/// Everything a client core needs, checked.
#[derive(Debug)]
pub struct Plan {
    pub host: HostConfig,
    pub rw: Rw,
    pub mix: u8,
    pub bs: usize,
    pub qd: u16,
    pub queues: u16,
    pub nsid: u32,
    pub range: Option<u64>,
    pub cpus: Vec<usize>,
    pub time: Duration,
    pub warmup: Duration,
    pub idle: Option<Duration>,
    pub idle_poll: Duration,
}

/// When every core reports: `events[i]` ends interval `i` (the first starts
/// at `t0`). Events are whole seconds from `t0`, plus the end of the warm-up
/// and the end.
#[derive(Debug)]
pub struct Timeline {
    pub t0: Instant,
    pub warmup_end: Instant,
    pub end: Instant,
    pub events: Vec<Instant>,
}

impl Timeline {
    fn new(t0: Instant, warmup: Duration, measured: Duration) -> Timeline {
        let warmup_end = t0 + warmup;
        let end = warmup_end + measured;
        let mut events: Vec<Instant> = (1..)
            .map(|k| t0 + Duration::from_secs(k))
            .take_while(|&t| t < end)
            .collect();
        events.push(end);
        if warmup_end > t0 {
            events.push(warmup_end);
        }
        events.sort();
        // Drop events closer than 10 ms to the next: a sliver of an interval
        // says nothing.
        let mut kept: Vec<Instant> = Vec::with_capacity(events.len());
        for (i, &e) in events.iter().enumerate() {
            let keep = e == end
                || e == warmup_end
                || events
                    .get(i + 1)
                    .is_none_or(|&n| n - e >= Duration::from_millis(10));
            if keep && kept.last() != Some(&e) {
                kept.push(e);
            }
        }
        Timeline {
            t0,
            warmup_end,
            end,
            events: kept,
        }
    }
}

/// What the cores and the main thread share.
#[derive(Debug, Default)]
pub struct Shared {
    /// Set once every core is connected: the cores start.
    pub timeline: OnceLock<Timeline>,
    /// Set by the main thread when a core failed: everyone stops.
    pub abort: AtomicBool,
}

/// Core → main thread.
#[derive(Debug)]
pub enum Msg {
    Ready {
        core: usize,
        geo: Geometry,
    },
    Tick {
        core: usize,
        idx: usize,
        iv: Box<Interval>,
    },
    /// The core has finished (last message): target errors by kind, and
    /// why it stopped early, if it did.
    Done {
        core: usize,
        errors: BTreeMap<String, u64>,
        failure: Option<String>,
    },
}

fn secs(v: f64, flag: &str, zero_ok: bool) -> Result<Duration, String> {
    if !v.is_finite() || v < 0.0 || (!zero_ok && v == 0.0) || v > 1e7 {
        return Err(format!("{flag} {v}: a number of seconds above 0"));
    }
    Ok(Duration::from_secs_f64(v))
}

fn human_bytes(n: u64) -> String {
    for (u, s) in [
        (1u64 << 40, "TiB"),
        (1 << 30, "GiB"),
        (1 << 20, "MiB"),
        (1 << 10, "KiB"),
    ] {
        if n >= u && n.is_multiple_of(u) {
            return format!("{} {s}", n / u);
        }
    }
    format!("{n} bytes")
}

/// Flags → plan, or a message for the user.
pub fn plan(a: &PerfArgs) -> Result<Plan, String> {
    let addr = a
        .target
        .to_socket_addrs()
        .map_err(|e| format!("--target {}: {e} (use ADDR:PORT)", a.target))?
        .next()
        .ok_or_else(|| format!("--target {}: no address", a.target))?;
    let bs = parse_size(&a.bs).map_err(|e| format!("--bs: {e}"))?;
    if bs == 0 || !bs.is_multiple_of(512) || bs > (64 << 20) {
        return Err(format!("--bs {}: a multiple of 512 bytes up to 64M", a.bs));
    }
    let range = match &a.range {
        Some(r) => {
            let v = parse_size(r).map_err(|e| format!("--range: {e}"))?;
            if v < bs {
                return Err(format!("--range {r}: smaller than --bs {}", a.bs));
            }
            Some(v)
        }
        None => None,
    };
    let allowed = sys::allowed_cpus();
    let mut cpus = match &a.cpus {
        Some(l) => {
            let c = sys::parse_cpu_list(l).map_err(|e| format!("--cpus: {e}"))?;
            if let Some(bad) = c.iter().find(|c| !allowed.contains(c)) {
                return Err(format!(
                    "--cpus: CPU {bad} is not available (available: {allowed:?})"
                ));
            }
            c
        }
        None => allowed.clone(),
    };
    match (a.cores, &a.cpus) {
        (Some(n), _) if n == 0 || n > cpus.len() => {
            return Err(format!(
                "--cores {n}: between 1 and {} CPUs are available",
                cpus.len()
            ))
        }
        (Some(n), Some(_)) => cpus.truncate(n),
        // Without --cpus, the last CPUs: a target started without --cpus
        // puts its first core on CPU 0.
        (Some(n), None) => cpus = cpus.split_off(cpus.len() - n),
        (None, Some(_)) => {}
        (None, None) => cpus = cpus.split_off(cpus.len() - 1),
    }
    if a.ns == 0 || a.ns == u32::MAX {
        return Err(format!("--ns {}: a namespace ID from 1", a.ns));
    }
    let mut host = HostConfig::new(addr, a.nqn.clone());
    host.hostnqn = a
        .hostnqn
        .clone()
        .unwrap_or_else(|| uuid_hostnqn(&DEFAULT_HOSTID));
    if a.digest {
        host.digests = Digests {
            header: true,
            data: true,
        };
    }
    // One more entry than commands in flight (SQ full rule).
    host.queue_size = a.qd.saturating_add(1).max(2);
    let idle_poll = parse_duration(&a.idle_poll).map_err(|e| format!("--idle-poll: {e}"))?;
    if idle_poll > Duration::from_secs(1) {
        return Err(format!("--idle-poll {}: at most 1s", a.idle_poll));
    }
    host.idle_poll = idle_poll;
    Ok(Plan {
        host,
        rw: a.rw,
        mix: a.mix,
        bs: bs as usize,
        qd: a.qd,
        queues: a.queues,
        nsid: a.ns,
        range,
        cpus,
        time: secs(a.time, "--time", false)?,
        warmup: secs(a.warmup, "--warmup", true)?,
        idle: a.idle.map(|v| secs(v, "--idle", false)).transpose()?,
        idle_poll,
    })
}

/// Runs `nvmf-tpc perf ARGS` (`argv[0]` is "perf"); returns the exit status.
pub fn main(argv: &[String]) -> i32 {
    let m = match command().try_get_matches_from(argv) {
        Ok(m) => m,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() { 2 } else { 0 };
        }
    };
    let args = match PerfArgs::from_arg_matches(&m) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("nvmf-tpc perf: {e}");
            return 2;
        }
    };
    let _ = env_logger::Builder::from_env(
        env_logger::Env::default().default_filter_or(&args.log_level),
    )
    .format_timestamp_millis()
    .try_init();
    let plan = match plan(&args) {
        Ok(p) => Arc::new(p),
        Err(e) => {
            eprintln!("nvmf-tpc perf: {e}");
            return 2;
        }
    };
    match run(&args, plan) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("nvmf-tpc perf: {e}");
            1
        }
    }
}

fn run(args: &PerfArgs, plan: Arc<Plan>) -> Result<i32, String> {
    let shared = Arc::new(Shared::default());
    let (tx, rx) = mpsc::channel::<Msg>();
    let ncores = plan.cpus.len();
    let mut handles = Vec::new();
    for (core, &cpu) in plan.cpus.iter().enumerate() {
        match worker::spawn(core, cpu, plan.clone(), shared.clone(), tx.clone()) {
            Ok(h) => handles.push(h),
            Err(e) => {
                drop(tx);
                stop_cores(&shared, handles);
                return Err(e);
            }
        }
    }
    drop(tx);

    // Connect: wait for every core (or the first failure).
    let mut failures: Vec<String> = Vec::new();
    let Some(geo) = await_ready(&rx, ncores, &shared, &mut failures) else {
        stop_cores(&shared, handles);
        return Err(failures.join("; "));
    };
    // The cores checked the same already; this cannot fail once they are ready.
    let shape = match Shape::new(&plan, &geo) {
        Ok(s) => s,
        Err(e) => {
            stop_cores(&shared, handles);
            return Err(e);
        }
    };
    print_header(args, &plan, &geo, &shape);

    let (warmup, measured) = match plan.idle {
        Some(d) => (Duration::ZERO, d),
        None => (plan.warmup, plan.time),
    };
    // A little slack so that every core sees the timeline before t0.
    let tl = Timeline::new(Instant::now() + Duration::from_millis(20), warmup, measured);
    let tl = {
        let _ = shared.timeline.set(tl);
        shared.timeline.get().expect("just set")
    };
    if plan.idle.is_some() {
        println!(
            "idle: {ncores} controller(s) with {} I/O queue(s) each connected; holding them idle for {:.1} s",
            plan.queues,
            measured.as_secs_f64()
        );
    }

    let mut c = Collect::new(args, &plan, tl, &shared, failures);
    c.collect(&rx);
    for h in handles {
        let _ = h.join();
    }
    // A run cut short has no end sample: take one now.
    let start_sample =
        c.samples[0].unwrap_or_else(|| (Instant::now(), cpu_sample(args.target_pid)));
    let end_sample = c.samples[1].unwrap_or_else(|| (Instant::now(), cpu_sample(args.target_pid)));
    let measured_s = measured_seconds(tl, c.aborted, c.printed);
    let client_cpu = end_sample.1.client.saturating_sub(start_sample.1.client);
    let target_cpu = match (start_sample.1.target, end_sample.1.target) {
        (Some(a), Some(b)) => Some(b.saturating_sub(a)),
        _ => None,
    };

    if plan.idle.is_some() {
        return Ok(report_idle(
            args,
            &plan,
            measured_s,
            client_cpu,
            target_cpu,
            &c.failures,
        ));
    }
    let r = Report {
        args,
        plan: &plan,
        geo: &geo,
        shape: &shape,
        total: &c.total,
        seconds: measured_s,
        client_cpu,
        target_cpu,
        errors: &c.errors,
        failures: &c.failures,
        per_second: c.per_second,
    };
    Ok(r.finish())
}

/// Abort every client core and wait for them.
fn stop_cores(shared: &Shared, handles: Vec<glommio::ExecutorJoinHandle<()>>) {
    shared.abort.store(true, Ordering::Relaxed);
    for h in handles {
        let _ = h.join();
    }
}

/// Wait until every core has connected; the namespace geometry they found,
/// or None with the reasons in `failures`.
fn await_ready(
    rx: &mpsc::Receiver<Msg>,
    ncores: usize,
    shared: &Shared,
    failures: &mut Vec<String>,
) -> Option<Geometry> {
    let mut geo: Option<Geometry> = None;
    let mut finished = 0usize;
    let mut ready = 0usize;
    while ready + finished < ncores {
        match rx.recv() {
            Ok(Msg::Ready { geo: g, .. }) => {
                ready += 1;
                geo.get_or_insert(g);
            }
            Ok(Msg::Done { failure, .. }) => {
                finished += 1;
                if let Some(err) = failure {
                    failures.push(err);
                    shared.abort.store(true, Ordering::Relaxed);
                }
            }
            Ok(Msg::Tick { .. }) => {}
            Err(_) => break,
        }
    }
    match geo {
        Some(g) if failures.is_empty() => Some(g),
        _ => {
            if failures.is_empty() {
                failures.push("a client core stopped while connecting".into());
            }
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(extra: &[&str]) -> PerfArgs {
        let mut v = vec!["perf"];
        v.extend_from_slice(extra);
        let m = command().try_get_matches_from(v).unwrap();
        PerfArgs::from_arg_matches(&m).unwrap()
    }

    #[test]
    fn defaults() {
        let p = plan(&args(&[])).unwrap();
        assert_eq!(p.host.addr.to_string(), "127.0.0.1:4420");
        assert_eq!(p.host.subnqn, DEFAULT_SUBSYSTEM_NQN);
        assert_eq!(
            (p.rw, p.bs, p.qd, p.queues, p.nsid),
            (Rw::RandRead, 4096, 32, 1, 1)
        );
        assert_eq!(p.cpus.len(), 1);
        assert_eq!(p.time, Duration::from_secs(10));
        assert_eq!(p.host.queue_size, 33);
        assert!(!p.host.digests.header);
    }

    #[test]
    fn flags() {
        let p = plan(&args(&[
            "--rw", "randrw", "--mix", "30", "--bs", "128K", "--qd", "8", "--digest", "--range",
            "1G", "--time", "2.5", "--warmup", "0", "--cpus", "0",
        ]))
        .unwrap();
        assert_eq!((p.rw, p.mix, p.bs, p.qd), (Rw::RandRw, 30, 128 << 10, 8));
        assert_eq!(p.range, Some(1 << 30));
        assert!(p.host.digests.header && p.host.digests.data);
        assert_eq!(p.time, Duration::from_millis(2500));
        assert_eq!(p.cpus, vec![0]);
        assert!(plan(&args(&["--bs", "1000"])).is_err());
        assert!(plan(&args(&["--time", "0"])).is_err());
        assert!(plan(&args(&["--cores", "100000"])).is_err());
        assert!(plan(&args(&["--range", "1K"])).is_err());
        assert!(command()
            .try_get_matches_from(["perf", "--mix", "101"])
            .is_err());
        assert!(command()
            .try_get_matches_from(["perf", "--rw", "bogus"])
            .is_err());
    }

    #[test]
    fn timeline_events() {
        let t0 = Instant::now();
        let tl = Timeline::new(t0, Duration::from_secs(1), Duration::from_millis(2500));
        let offs: Vec<u128> = tl.events.iter().map(|e| (*e - t0).as_millis()).collect();
        assert_eq!(offs, vec![1000, 2000, 3000, 3500]);
        let tl = Timeline::new(t0, Duration::from_millis(500), Duration::from_secs(1));
        let offs: Vec<u128> = tl.events.iter().map(|e| (*e - t0).as_millis()).collect();
        assert_eq!(offs, vec![500, 1000, 1500]);
        let tl = Timeline::new(t0, Duration::ZERO, Duration::from_millis(1005));
        let offs: Vec<u128> = tl.events.iter().map(|e| (*e - t0).as_millis()).collect();
        assert_eq!(offs, vec![1005]);
    }
}
