//! The main thread during a run: the cores' reports merged per interval, a
//! line printed per interval every live core has reported, and CPU times
//! sampled at the start and the end of the measurement.

use super::stats::{grouped, num, Interval};
use super::{sys, Msg, PerfArgs, Plan, Shared, Timeline};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::{Duration, Instant};

/// A CPU-time sample: this process, and the target when its PID is known.
#[derive(Clone, Copy, Debug)]
pub(super) struct CpuSample {
    pub(super) client: Duration,
    pub(super) target: Option<Duration>,
}

pub(super) fn cpu_sample(pid: Option<u32>) -> CpuSample {
    CpuSample {
        client: sys::self_cpu_time(),
        target: pid.and_then(|p| match sys::proc_cpu_time(p) {
            Ok(t) => Some(t),
            Err(e) => {
                log::warn!("--target-pid: {e}");
                None
            }
        }),
    }
}

/// One merged interval.
struct Slice {
    reports: usize,
    iv: Interval,
}

/// The main thread during a run: merges the cores' reports per interval,
/// prints a line per interval every live core has reported, and samples
/// CPU times at the start and the end of the measurement.
pub(super) struct Collect<'a> {
    args: &'a PerfArgs,
    plan: &'a Plan,
    tl: &'a Timeline,
    shared: &'a Shared,
    slices: Vec<Slice>,
    /// Intervals printed (and merged into `total` past the warm-up).
    pub(super) printed: usize,
    pub(super) total: Interval,
    pub(super) per_second: Vec<Value>,
    pub(super) samples: [Option<(Instant, CpuSample)>; 2],
    pub(super) errors: BTreeMap<String, u64>,
    pub(super) failures: Vec<String>,
    /// Cores still measuring, and cores finished.
    live: usize,
    done: usize,
    pub(super) aborted: bool,
}

impl<'a> Collect<'a> {
    pub(super) fn new(
        args: &'a PerfArgs,
        plan: &'a Plan,
        tl: &'a Timeline,
        shared: &'a Shared,
        failures: Vec<String>,
    ) -> Self {
        Collect {
            args,
            plan,
            tl,
            shared,
            slices: (0..tl.events.len())
                .map(|_| Slice {
                    reports: 0,
                    iv: Interval::default(),
                })
                .collect(),
            printed: 0,
            total: Interval::default(),
            per_second: Vec::new(),
            samples: [None, None],
            errors: BTreeMap::new(),
            failures,
            live: plan.cpus.len(),
            done: 0,
            aborted: false,
        }
    }

    /// Until every core is done.
    pub(super) fn collect(&mut self, rx: &mpsc::Receiver<Msg>) {
        while self.done < self.plan.cpus.len() {
            let due = self.sample_due();
            let wait = due.map_or(Duration::from_millis(200), |d| {
                d.saturating_duration_since(Instant::now())
            });
            let msg = if wait.is_zero() {
                Err(RecvTimeoutError::Timeout)
            } else {
                rx.recv_timeout(wait)
            };
            match msg {
                Err(RecvTimeoutError::Timeout) => self.sample_if(due),
                Err(RecvTimeoutError::Disconnected) => break,
                Ok(m) => self.on_msg(m),
            }
            self.print_complete();
        }
    }

    /// When the next CPU sample is due: the end of the warm-up, then the end.
    fn sample_due(&self) -> Option<Instant> {
        match self.samples {
            [None, _] => Some(self.tl.warmup_end),
            [Some(_), None] => Some(self.tl.end),
            _ => None,
        }
    }

    fn sample_if(&mut self, due: Option<Instant>) {
        let Some(d) = due else { return };
        if Instant::now() < d {
            return;
        }
        let s = Some((Instant::now(), cpu_sample(self.args.target_pid)));
        if self.samples[0].is_none() {
            self.samples[0] = s;
        } else {
            self.samples[1] = s;
        }
    }

    fn on_msg(&mut self, msg: Msg) {
        match msg {
            Msg::Tick { idx, iv, .. } => {
                if let Some(s) = self.slices.get_mut(idx) {
                    s.reports += 1;
                    s.iv.merge(&iv);
                }
            }
            Msg::Done {
                errors: e, failure, ..
            } => {
                for (k, v) in e {
                    *self.errors.entry(k).or_default() += v;
                }
                self.done += 1;
                if let Some(err) = failure {
                    eprintln!("nvmf-tpc perf: {err}");
                    self.failures.push(err);
                    self.shared.abort.store(true, Ordering::Relaxed);
                    self.aborted = true;
                    self.live -= 1;
                }
            }
            Msg::Ready { .. } => {}
        }
    }

    /// Print the intervals every live core has reported, in order.
    fn print_complete(&mut self) {
        let tl = self.tl;
        while self.printed < self.slices.len()
            && self.slices[self.printed].reports >= self.live
            && self.live > 0
        {
            let i = self.printed;
            let start = if i == 0 { tl.t0 } else { tl.events[i - 1] };
            let end = tl.events[i];
            let warm = end <= tl.warmup_end;
            let iv = &self.slices[i].iv;
            if self.plan.idle.is_none() {
                let t = (end - tl.t0).as_secs_f64();
                let dur = (end - start).as_secs_f64();
                self.per_second
                    .push(interval_line(self.args, iv, t, dur, warm));
            }
            if !warm {
                self.total.merge(iv);
            }
            self.printed += 1;
        }
    }
}

/// One interval every live core has reported: its line (unless --quiet)
/// and its JSON record.
fn interval_line(args: &PerfArgs, iv: &Interval, t_s: f64, dur: f64, warm: bool) -> Value {
    let iops = iv.ios() as f64 / dur;
    let mibs = iv.bytes as f64 / dur / (1 << 20) as f64;
    let p99 = iv.p99_us();
    if !args.quiet {
        println!(
            "[{:6.1} s] {:>11} IOPS {:>9.1} MiB/s   p99 {:>9.1} µs{}{}",
            t_s,
            grouped(iops.round() as u64),
            mibs,
            p99,
            if iv.errors > 0 {
                format!("   errors {}", iv.errors)
            } else {
                String::new()
            },
            if warm { "   (warm-up)" } else { "" }
        );
    }
    json!({
        "t_s": num(t_s),
        "seconds": num(dur),
        "warmup": warm,
        "iops": num(iops),
        "mib_s": num(mibs),
        "p99_us": num(p99),
        "errors": iv.errors,
    })
}

/// Seconds the merged intervals cover: the whole measurement, or for a run
/// cut short only the whole intervals after the warm-up.
pub(super) fn measured_seconds(tl: &Timeline, aborted: bool, printed: usize) -> f64 {
    if !aborted {
        return (tl.end - tl.warmup_end).as_secs_f64();
    }
    (0..printed)
        .filter(|&i| tl.events[i] > tl.warmup_end)
        .map(|i| {
            let s = if i == 0 { tl.t0 } else { tl.events[i - 1] };
            (tl.events[i] - s).as_secs_f64()
        })
        .sum::<f64>()
}
