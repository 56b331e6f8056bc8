//! The `nvmf-tpc` command.

use nvmf_tpc::{huge_alloc::HugeAlloc, perf, serve};

#[global_allocator]
static ALLOC: HugeAlloc = HugeAlloc;

fn init_logging(level: &str) {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(level))
        .format_timestamp_millis()
        .init();
}

fn log_level(argv: &[String]) -> String {
    argv.iter()
        .position(|a| a == "--log-level")
        .and_then(|i| argv.get(i + 1).cloned())
        .or_else(|| {
            argv.iter()
                .find_map(|a| a.strip_prefix("--log-level=").map(str::to_string))
        })
        .unwrap_or_else(|| "info".into())
}

fn main() {
    let argv: Vec<String> = std::env::args().collect();
    let app = clap::Command::new("nvmf-tpc")
        .version(env!("CARGO_PKG_VERSION"))
        .about("Thread-per-core NVMe/TCP target: exports files, block devices, RAM and null namespaces over NVMe/TCP")
        .subcommand_required(true)
        .arg_required_else_help(true)
        .subcommand(
            serve::command()
                .about("Serve namespaces to NVMe/TCP hosts (with no flags: a 1 GiB file under ./nvmf-tpc-data on 127.0.0.1:4420)"),
        )
        .subcommand(perf::command().about(
            "Load generator for any NVMe/TCP target: IOPS, MiB/s, latency percentiles and histogram, CPU per I/O",
        ));
    let m = app.get_matches_from(&argv);
    match m.subcommand_name() {
        Some("serve") => {
            let sub = &argv[1..];
            init_logging(&log_level(sub));
            let cfg = match serve::parse_config(sub) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("nvmf-tpc serve: {e}");
                    std::process::exit(2);
                }
            };
            if let Err(e) = serve::install_signal_handler() {
                eprintln!("nvmf-tpc serve: {e}");
                std::process::exit(1);
            }
            if let Err(e) = serve::run(cfg) {
                eprintln!("nvmf-tpc serve: {e}");
                std::process::exit(1);
            }
        }
        Some("perf") => std::process::exit(perf::main(&argv[1..])),
        _ => unreachable!("clap requires a subcommand"),
    }
}
