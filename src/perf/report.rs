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

pub(super) fn write_json(path: &std::path::Path, j: &Json) -> bool {
    match std::fs::write(path, j.to_text()) {
        Ok(()) => true,
        Err(e) => {
            eprintln!("nvmf-tpc perf: --json {}: {e}", path.display());
            false
        }
    }
}

pub(super) fn config_json(args: &PerfArgs, plan: &Plan) -> Json {
    Json::obj([
        ("target", Json::str(plan.host.addr.to_string())),
        ("nqn", Json::str(plan.host.subnqn.clone())),
        ("hostnqn", Json::str(plan.host.hostnqn.clone())),
        ("rw", Json::str(plan.rw.name())),
        ("mix", Json::int(plan.mix)),
        ("bs", Json::int(plan.bs as u64)),
        ("qd", Json::int(plan.qd)),
        ("queues", Json::int(plan.queues)),
        ("cores", Json::int(plan.cpus.len() as u64)),
        (
            "cpus",
            Json::Arr(plan.cpus.iter().map(|&c| Json::int(c as u64)).collect()),
        ),
        ("time_s", Json::Num(plan.time.as_secs_f64())),
        ("warmup_s", Json::Num(plan.warmup.as_secs_f64())),
        ("nsid", Json::int(plan.nsid)),
        ("digest", Json::Bool(args.digest)),
        ("idle_poll_us", Json::int(plan.idle_poll.as_micros() as u64)),
        ("target_pid", args.target_pid.map_or(Json::Null, Json::int)),
    ])
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
        let j = Json::obj([
            ("tool", Json::str("nvmf-tpc perf")),
            ("version", Json::str(env!("CARGO_PKG_VERSION"))),
            ("mode", Json::str("idle")),
            ("config", config_json(args, plan)),
            (
                "result",
                Json::obj([
                    ("seconds", Json::Num(seconds)),
                    ("controllers", Json::int(plan.cpus.len() as u64)),
                    ("io_queues_per_controller", Json::int(plan.queues)),
                    (
                        "target_cpu_s",
                        target_cpu.map_or(Json::Null, |t| Json::Num(t.as_secs_f64())),
                    ),
                    (
                        "target_cpu_pct",
                        target_cpu.map_or(Json::Null, |t| Json::Num(pct(t))),
                    ),
                    ("client_cpu_pct", Json::Num(pct(client_cpu))),
                    (
                        "failures",
                        Json::Arr(failures.iter().map(|f| Json::str(f.clone())).collect()),
                    ),
                ]),
            ),
            ("ok", Json::Bool(ok)),
        ]);
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
    pub(super) per_second: Vec<Json>,
}

impl Report<'_> {
    pub(super) fn finish(self) -> i32 {
        let t = self.total;
        let secs = self.seconds.max(1e-9);
        let ios = t.ios();
        let iops = ios as f64 / secs;
        let mibs = t.bytes as f64 / secs / (1 << 20) as f64;
        let lat = Latency::of(t);
        let per_io = |d: Duration| {
            if ios == 0 {
                0.0
            } else {
                d.as_secs_f64() * 1e6 / ios as f64
            }
        };
        let error_total: u64 = self.errors.values().sum();
        let ok = self.failures.is_empty() && error_total == 0 && ios > 0;

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
        println!("  IOPS        {}{split}", grouped(iops.round() as u64));
        println!("  MiB/s       {mibs:.1}");
        println!("  I/Os        {}", grouped(ios));
        println!(
            "  latency µs  mean {:.1}  p50 {:.1}  p90 {:.1}  p99 {:.1}  p99.9 {:.1}  p99.99 {:.1}  max {:.1}  (min {:.1})",
            lat.mean, lat.p50, lat.p90, lat.p99, lat.p999, lat.p9999, lat.max, lat.min
        );
        println!(
            "  client CPU  {:.2} µs per I/O  ({:.2} s user+sys = {:.0}% of one core)",
            per_io(self.client_cpu),
            self.client_cpu.as_secs_f64(),
            self.client_cpu.as_secs_f64() * 100.0 / secs
        );
        if let Some(tc) = self.target_cpu {
            println!(
                "  target CPU  {:.2} µs per I/O  ({:.2} s user+sys = {:.0}% of one core; pid {})",
                per_io(tc),
                tc.as_secs_f64(),
                tc.as_secs_f64() * 100.0 / secs,
                self.args.target_pid.unwrap_or(0)
            );
        }
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
        if ios == 0 && self.failures.is_empty() {
            println!("  no I/O completed in the measured window: the run FAILS");
        }
        println!("  latency histogram (share of I/Os per power-of-two range):");
        print!("{}", text_histogram(&t.hist));

        let mut ok_json = true;
        if let Some(path) = &self.args.json {
            let rows = log_rows(&t.hist, 1);
            let fine = log_rows(&t.hist, 8);
            let j = Json::obj([
                ("tool", Json::str("nvmf-tpc perf")),
                ("version", Json::str(env!("CARGO_PKG_VERSION"))),
                ("mode", Json::str("load")),
                ("config", config_json(self.args, self.plan)),
                (
                    "namespace",
                    Json::obj([
                        ("blocks", Json::int(self.geo.nsze)),
                        ("block_size", Json::int(self.geo.block_size)),
                        (
                            "range_bytes",
                            Json::int(self.shape.places * self.plan.bs as u64),
                        ),
                        ("qd_effective", Json::int(self.shape.depth)),
                    ]),
                ),
                (
                    "result",
                    Json::obj([
                        ("seconds", Json::Num(self.seconds)),
                        ("ios", Json::int(ios)),
                        ("reads", Json::int(t.reads)),
                        ("writes", Json::int(t.writes)),
                        ("bytes", Json::int(t.bytes)),
                        ("iops", Json::Num(iops)),
                        ("read_iops", Json::Num(t.reads as f64 / secs)),
                        ("write_iops", Json::Num(t.writes as f64 / secs)),
                        ("mib_s", Json::Num(mibs)),
                        ("latency_us", latency_json(&lat)),
                        ("client_cpu_s", Json::Num(self.client_cpu.as_secs_f64())),
                        ("client_cpu_us_per_io", Json::Num(per_io(self.client_cpu))),
                        (
                            "target_cpu_s",
                            self.target_cpu
                                .map_or(Json::Null, |d| Json::Num(d.as_secs_f64())),
                        ),
                        (
                            "target_cpu_us_per_io",
                            self.target_cpu.map_or(Json::Null, |d| Json::Num(per_io(d))),
                        ),
                        ("errors", Json::int(error_total)),
                        (
                            "error_kinds",
                            Json::Obj(
                                self.errors
                                    .iter()
                                    .map(|(k, v)| (k.clone(), Json::int(*v)))
                                    .collect(),
                            ),
                        ),
                        (
                            "failures",
                            Json::Arr(self.failures.iter().map(|f| Json::str(f.clone())).collect()),
                        ),
                        ("histogram", rows_json(&rows, ios)),
                        ("histogram_fine", rows_json(&fine, ios)),
                        ("per_second", Json::Arr(self.per_second)),
                    ]),
                ),
                ("ok", Json::Bool(ok)),
            ]);
            ok_json = write_json(path, &j);
        }
        if ok && ok_json {
            0
        } else {
            1
        }
    }
}
