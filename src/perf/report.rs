//! What `nvmf-tpc perf` prints and writes: the header, the live lines'
//! JSON, the summary (IOPS, latency percentiles, histogram, CPU per I/O),
//! the idle-CPU report.

use super::*;

pub(super) fn print_header(args: &PerfArgs, plan: &Plan, geo: &Geometry, shape: &Shape) {
    let cpus: Vec<String> = plan.cpus.iter().map(|c| c.to_string()).collect();
    let what = if plan.idle.is_some() {
        "idle connection".to_string()
    } else {
        let mix = if plan.rw == Rw::RandRw {
            format!(" ({}% reads)", plan.mix)
        } else {
            String::new()
        };
        format!(
            "{}{mix}, {} per I/O, QD {} x {} queue(s) x {} core(s)",
            plan.rw.name(),
            human_bytes(plan.bs as u64),
            shape.depth,
            plan.queues,
            plan.cpus.len()
        )
    };
    println!(
        "nvmf-tpc perf: {what} on CPU {} -> {} {}",
        cpus.join(","),
        plan.host.addr,
        plan.host.subnqn
    );
    let ns_bytes = geo.nsze * u64::from(geo.block_size);
    println!(
        "  namespace {}: {} blocks of {} bytes ({}), range {}; digests {}; controller {}",
        plan.nsid,
        grouped(geo.nsze),
        geo.block_size,
        human_bytes(ns_bytes),
        human_bytes(shape.places * plan.bs as u64),
        if args.digest { "header+data" } else { "off" },
        geo.cntlid
    );
    if shape.depth < plan.qd {
        println!(
            "  note: --qd {} capped to {} by the target's queue size ({} entries)",
            plan.qd, shape.depth, geo.io_queue_size
        );
    }
    if plan.idle.is_none() {
        println!(
            "  {:.1} s warm-up, then {:.1} s measured",
            plan.warmup.as_secs_f64(),
            plan.time.as_secs_f64()
        );
    }
}

pub(super) fn write_json(path: &std::path::Path, j: &Value) -> bool {
    let text = serde_json::to_string_pretty(j).expect("a JSON value always serializes") + "\n";
    match std::fs::write(path, text) {
        Ok(()) => true,
        Err(e) => {
            eprintln!("nvmf-tpc perf: --json {}: {e}", path.display());
            false
        }
    }
}

pub(super) fn config_json(args: &PerfArgs, plan: &Plan) -> Value {
    json!({
        "target": plan.host.addr.to_string(),
        "nqn": plan.host.subnqn,
        "hostnqn": plan.host.hostnqn,
        "rw": plan.rw.name(),
        "mix": plan.mix,
        "bs": plan.bs,
        "qd": plan.qd,
        "queues": plan.queues,
        "cores": plan.cpus.len(),
        "cpus": plan.cpus,
        "time_s": num(plan.time.as_secs_f64()),
        "warmup_s": num(plan.warmup.as_secs_f64()),
        "nsid": plan.nsid,
        "digest": args.digest,
        "idle_poll_us": plan.idle_poll.as_micros() as u64,
        "target_pid": args.target_pid,
    })
}

pub(super) fn report_idle(
    args: &PerfArgs,
    plan: &Plan,
    seconds: f64,
    client_cpu: Duration,
    target_cpu: Option<Duration>,
    failures: &[String],
) -> i32 {
    let pct = |d: Duration| d.as_secs_f64() * 100.0 / seconds.max(1e-9);
    println!();
    println!("idle window:    {seconds:.2} s");
    match target_cpu {
        Some(t) => println!(
            "target CPU:     {:.3} s = {:.2}% of one core (utime+stime from /proc, 10 ms ticks)",
            t.as_secs_f64(),
            pct(t)
        ),
        None => println!("target CPU:     not measured (give --target-pid)"),
    }
    println!(
        "client CPU:     {:.3} s = {:.2}% of one core",
        client_cpu.as_secs_f64(),
        pct(client_cpu)
    );
    let ok = failures.is_empty();
    let mut ok_json = ok;
    if let Some(path) = &args.json {
        let j = json!({
            "tool": "nvmf-tpc perf",
            "version": env!("CARGO_PKG_VERSION"),
            "mode": "idle",
            "config": config_json(args, plan),
            "result": {
                "seconds": num(seconds),
                "controllers": plan.cpus.len(),
                "io_queues_per_controller": plan.queues,
                "target_cpu_s": target_cpu.map(|t| num(t.as_secs_f64())),
                "target_cpu_pct": target_cpu.map(|t| num(pct(t))),
                "client_cpu_pct": num(pct(client_cpu)),
                "failures": failures,
            },
            "ok": ok,
        });
        ok_json = write_json(path, &j) && ok;
    }
    if ok_json {
        0
    } else {
        1
    }
}

/// The end of a load run: summary text, JSON, exit status.
pub(super) struct Report<'a> {
    pub(super) args: &'a PerfArgs,
    pub(super) plan: &'a Plan,
    pub(super) geo: &'a Geometry,
    pub(super) shape: &'a Shape,
    pub(super) total: &'a Interval,
    pub(super) seconds: f64,
    pub(super) client_cpu: Duration,
    pub(super) target_cpu: Option<Duration>,
    pub(super) errors: &'a BTreeMap<String, u64>,
    pub(super) failures: &'a [String],
    pub(super) per_second: Vec<Value>,
}

impl Report<'_> {
    pub(super) fn finish(self) -> i32 {
        let error_total: u64 = self.errors.values().sum();
        let ok = self.failures.is_empty() && error_total == 0 && self.total.ios() > 0;
        self.print_summary(error_total);
        let ok_json = match &self.args.json {
            Some(path) => write_json(path, &self.result_json(error_total, ok)),
            None => true,
        };
        if ok && ok_json {
            0
        } else {
            1
        }
    }

    fn iops(&self) -> f64 {
        self.total.ios() as f64 / self.seconds.max(1e-9)
    }

    fn mib_s(&self) -> f64 {
        self.total.bytes as f64 / self.seconds.max(1e-9) / (1 << 20) as f64
    }

    /// CPU time per I/O in µs.
    fn per_io(&self, d: Duration) -> f64 {
        match self.total.ios() {
            0 => 0.0,
            ios => d.as_secs_f64() * 1e6 / ios as f64,
        }
    }

    fn print_summary(&self, error_total: u64) {
        let t = self.total;
        let secs = self.seconds.max(1e-9);
        let lat = Latency::of(t);
        println!();
        println!(
            "{} {} in {:.2} s{}",
            self.plan.rw.name(),
            human_bytes(self.plan.bs as u64),
            self.seconds,
            if self.failures.is_empty() {
                ""
            } else {
                "  (ABORTED: the figures cover the whole seconds before the failure)"
            }
        );
        let split = if self.plan.rw == Rw::RandRw {
            format!(
                "   (reads {}, writes {})",
                grouped((t.reads as f64 / secs).round() as u64),
                grouped((t.writes as f64 / secs).round() as u64)
            )
        } else {
            String::new()
        };
        println!(
            "  IOPS        {}{split}",
            grouped(self.iops().round() as u64)
        );
        println!("  MiB/s       {:.1}", self.mib_s());
        println!("  I/Os        {}", grouped(t.ios()));
        println!(
            "  latency µs  mean {:.1}  p50 {:.1}  p90 {:.1}  p99 {:.1}  p99.9 {:.1}  p99.99 {:.1}  max {:.1}  (min {:.1})",
            lat.mean, lat.p50, lat.p90, lat.p99, lat.p999, lat.p9999, lat.max, lat.min
        );
        self.print_cpu(secs);
        self.print_errors(error_total);
        println!("  latency histogram (share of I/Os per power-of-two range):");
        print!("{}", text_histogram(&t.hist));
    }

    fn print_cpu(&self, secs: f64) {
        println!(
            "  client CPU  {:.2} µs per I/O  ({:.2} s user+sys = {:.0}% of one core)",
            self.per_io(self.client_cpu),
            self.client_cpu.as_secs_f64(),
            self.client_cpu.as_secs_f64() * 100.0 / secs
        );
        if let Some(tc) = self.target_cpu {
            println!(
                "  target CPU  {:.2} µs per I/O  ({:.2} s user+sys = {:.0}% of one core; pid {})",
                self.per_io(tc),
                tc.as_secs_f64(),
                tc.as_secs_f64() * 100.0 / secs,
                self.args.target_pid.unwrap_or(0)
            );
        }
    }

    fn print_errors(&self, error_total: u64) {
        if error_total == 0 {
            println!("  errors      0");
        } else {
            println!("  errors      {}  <- the run FAILS", grouped(error_total));
            for (k, v) in self.errors {
                println!("      {:>10}  {k}", grouped(*v));
            }
        }
        for f in self.failures {
            println!("  failure     {f}");
        }
        if self.total.ios() == 0 && self.failures.is_empty() {
            println!("  no I/O completed in the measured window: the run FAILS");
        }
    }

    fn result_json(&self, error_total: u64, ok: bool) -> Value {
        let t = self.total;
        let secs = self.seconds.max(1e-9);
        let ios = t.ios();
        json!({
            "tool": "nvmf-tpc perf",
            "version": env!("CARGO_PKG_VERSION"),
            "mode": "load",
            "config": config_json(self.args, self.plan),
            "namespace": {
                "blocks": self.geo.nsze,
                "block_size": self.geo.block_size,
                "range_bytes": self.shape.places * self.plan.bs as u64,
                "qd_effective": self.shape.depth,
            },
            "result": {
                "seconds": num(self.seconds),
                "ios": ios,
                "reads": t.reads,
                "writes": t.writes,
                "bytes": t.bytes,
                "iops": num(self.iops()),
                "read_iops": num(t.reads as f64 / secs),
                "write_iops": num(t.writes as f64 / secs),
                "mib_s": num(self.mib_s()),
                "latency_us": latency_json(&Latency::of(t)),
                "client_cpu_s": num(self.client_cpu.as_secs_f64()),
                "client_cpu_us_per_io": num(self.per_io(self.client_cpu)),
                "target_cpu_s": self.target_cpu.map(|d| num(d.as_secs_f64())),
                "target_cpu_us_per_io": self.target_cpu.map(|d| num(self.per_io(d))),
                "errors": error_total,
                "error_kinds": self.errors,
                "failures": self.failures,
                "histogram": rows_json(&log_rows(&t.hist, 1), ios),
                "histogram_fine": rows_json(&log_rows(&t.hist, 8), ios),
                "per_second": self.per_second,
            },
            "ok": ok,
        })
    }
}
