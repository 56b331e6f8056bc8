//! `nvmf-tpc serve` flags → a checked `TargetConfig`: CPUs, limits,
//! subsystems with their namespaces (opened and claimed) and hosts. Every
//! flag is checked here, at start, so that a typo fails before a host
//! connects.

use crate::config::*;
use crate::cpus::{allowed_cpus, parse_cpu_list};
use crate::storage::file;
use clap::{ArgAction, Args, FromArgMatches};
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;

#[derive(Args, Debug, Clone, Default)]
pub struct ServeArgs {
    /// Number of CPUs to serve on (one pinned executor each); default: every CPU this process may use.
    #[arg(long, value_name = "N")]
    pub cores: Option<usize>,
    /// Exact CPUs to pin executors to, e.g. "0-3,6".
    #[arg(long, value_name = "LIST")]
    pub cpus: Option<String>,
    /// Address to listen on, repeatable. Non-loopback addresses need --allow-host or --allow-any-host.
    #[arg(long, value_name = "ADDR:PORT", action = ArgAction::Append)]
    pub listen: Vec<String>,
    /// Start a subsystem (NQN); the --namespace, --allow-host and --allow-any-host flags after it belong to it.
    #[arg(long, value_name = "NQN", action = ArgAction::Append)]
    pub subsystem: Vec<String>,
    /// Namespace of the subsystem named before it: a file path, a block device, ram:SIZE or null:SIZE,
    /// optionally with ",bs=512" or ",bs=4096" (default 4096; block devices: their logical block size).
    #[arg(long, value_name = "SPEC", action = ArgAction::Append)]
    pub namespace: Vec<String>,
    /// Host NQN allowed to connect to the subsystem named before it (before any --subsystem: to all).
    #[arg(long, value_name = "NQN", action = ArgAction::Append)]
    pub allow_host: Vec<String>,
    /// Let any host connect to the subsystem named before it (before any --subsystem: to all).
    #[arg(long, action = ArgAction::Append, num_args = 0, default_missing_value = "true")]
    pub allow_any_host: Vec<String>,
    /// Entries per queue (CAP.MQES + 1).
    #[arg(long, default_value_t = DEFAULT_QUEUE_DEPTH)]
    pub queue_depth: u16,
    /// Largest transfer of one command (MDTS), e.g. 128K; a power of two from 4K to 8M.
    #[arg(long, default_value = "128K", value_name = "SIZE")]
    pub max_io_size: String,
    /// In-capsule data accepted on I/O queues, e.g. 8K.
    #[arg(long, default_value = "8K", value_name = "SIZE")]
    pub in_capsule_data: String,
    /// Serial number reported by every subsystem (default: derived from its NQN).
    #[arg(long)]
    pub serial: Option<String>,
    /// Model number reported.
    #[arg(long, default_value = DEFAULT_MODEL)]
    pub model: String,
    /// Largest H2CData PDU a host may send (ICResp MAXH2CDATA), e.g. 32K; at most
    /// --max-io-size (default: --max-io-size, at most 128K).
    #[arg(long, value_name = "SIZE")]
    pub max_h2c_data: Option<String>,
    /// I/O queues per controller (Number of Queues grants at most this many).
    #[arg(long, default_value_t = DEFAULT_IO_QUEUES)]
    pub max_io_queues: u16,
    /// Connections (queues) one core serves at once; more are refused.
    #[arg(long, default_value_t = DEFAULT_CONNECTIONS_PER_CORE)]
    pub max_connections: u32,
    /// Controllers (admin queues) one core owns at once; Connects beyond get
    /// "controller busy".
    #[arg(long, default_value_t = DEFAULT_CONTROLLERS_PER_CORE)]
    pub max_controllers: u32,
    /// Controllers one host NQN may hold at once on the whole target
    /// (discovery included), so that one host cannot lock the others out;
    /// Connects beyond get "controller busy".
    #[arg(long, default_value_t = crate::admission::DEFAULT_CONTROLLERS_PER_HOST)]
    pub max_controllers_per_host: u32,
    /// DMA memory per core for command data, e.g. 64M. When it is in use a
    /// core stops reading from its sockets until commands complete.
    #[arg(long, default_value = "64M", value_name = "SIZE")]
    pub dma_memory: String,
    /// Time a new connection has to send ICReq and Connect.
    #[arg(long, default_value = "10s", value_name = "DURATION")]
    pub connect_timeout: String,
    /// Time a PDU that has begun to arrive has to arrive whole.
    #[arg(long, default_value = "30s", value_name = "DURATION")]
    pub pdu_timeout: String,
    /// How long an executor keeps polling for work after it runs out before it
    /// sleeps (e.g. 0, 50us, 1ms). Polling cuts wake-up latency under load; an
    /// idle target still sleeps.
    #[arg(long, default_value = "50us", value_name = "DURATION")]
    pub idle_poll: String,
    /// TCP congestion control for accepted connections (e.g. cubic, reno,
    /// dctcp, bbr); default: the system's (net.ipv4.tcp_congestion_control).
    #[arg(long, value_name = "NAME")]
    pub tcp_congestion: Option<String>,
    /// Receive and send buffer of each accepted connection (0: the kernel's
    /// autotuning); at most net.core.rmem_max and net.core.wmem_max.
    /// Default: 2M where those allow it, as SPDK sets them, else autotuning.
    #[arg(long, value_name = "SIZE")]
    pub socket_buffer: Option<String>,
    /// Log level: error, warn, info, debug, trace (RUST_LOG overrides).
    #[arg(long, default_value = "info")]
    pub log_level: String,
}

/// Parse `serve` flags keeping their order (namespaces follow their subsystem).
pub fn parse_config(argv: &[String]) -> Result<TargetConfig, String> {
    let cmd = ServeArgs::augment_args(clap::Command::new("serve"));
    let m = cmd.try_get_matches_from(argv).map_err(|e| e.to_string())?;
    let args = ServeArgs::from_arg_matches(&m).map_err(|e| e.to_string())?;
    let idx =
        |name: &str| -> Vec<usize> { m.indices_of(name).map(|i| i.collect()).unwrap_or_default() };
    build_config(
        &args,
        &idx("subsystem"),
        &idx("namespace"),
        &idx("allow_host"),
        &idx("allow_any_host"),
    )
}

/// The command-line definition, for `--help` from main.
pub fn command() -> clap::Command {
    ServeArgs::augment_args(clap::Command::new("serve"))
}

fn parse_listen(s: &str) -> Result<SocketAddr, String> {
    let a = s
        .to_socket_addrs()
        .map_err(|e| format!("--listen {s}: {e} (use ADDR:PORT, e.g. 0.0.0.0:4420)"))?
        .next()
        .ok_or_else(|| format!("--listen {s}: no address"))?;
    if a.port() == 0 {
        return Err(format!("--listen {s}: choose a port (4420 is NVMe/TCP's)"));
    }
    Ok(a)
}

/// The checked configuration from parsed flags. `*_idx` are the argv
/// positions of the repeated subsystem-scoped flags (clap keeps each flag's
/// values apart; their interleaving decides which subsystem each belongs to).
fn build_config(
    args: &ServeArgs,
    sub_idx: &[usize],
    ns_idx: &[usize],
    host_idx: &[usize],
    any_idx: &[usize],
) -> Result<TargetConfig, String> {
    let cpus = pick_cpus(args)?;
    let listen_strs: Vec<String> = if args.listen.is_empty() {
        vec![DEFAULT_LISTEN.to_string()]
    } else {
        args.listen.clone()
    };
    let listen = listen_strs
        .iter()
        .map(|s| parse_listen(s))
        .collect::<Result<Vec<_>, _>>()?;
    let l = check_limits(args)?;
    let drafts = subsystem_drafts(args, sub_idx, ns_idx, host_idx, any_idx)?;
    let subsystems = resolve_subsystems(args, drafts, &listen)?;
    Ok(TargetConfig {
        listen,
        cpus,
        subsystems,
        queue_depth: args.queue_depth,
        max_io_size: l.max_io_size as u32,
        in_capsule_data: l.icd as u32,
        maxh2cdata: l.maxh2cdata,
        max_c2h_data: (l.max_io_size as u32).min(MAX_C2H_DATA),
        max_io_queues: args.max_io_queues,
        max_connections: args.max_connections as usize,
        max_controllers: args.max_controllers as usize,
        max_controllers_per_host: args.max_controllers_per_host as usize,
        dma_memory: l.dma_memory,
        idle_poll: l.idle_poll,
        connect_timeout: l.connect_timeout,
        pdu_timeout: l.pdu_timeout,
        tcp_congestion: args.tcp_congestion.clone(),
        socket_buffer: l.socket_buffer,
    })
}

/// `--cpus` and `--cores`, against the CPUs this process may use.
fn pick_cpus(args: &ServeArgs) -> Result<Vec<usize>, String> {
    let allowed = allowed_cpus();
    let mut cpus = match &args.cpus {
        Some(l) => {
            let c = parse_cpu_list(l)?;
            if let Some(bad) = c.iter().find(|c| !allowed.contains(c)) {
                return Err(format!(
                    "--cpus: CPU {bad} is not available (available: {allowed:?})"
                ));
            }
            c
        }
        None => allowed.clone(),
    };
    if let Some(n) = args.cores {
        if n == 0 || n > cpus.len() {
            return Err(format!(
                "--cores {n}: between 1 and {} CPUs are available",
                cpus.len()
            ));
        }
        cpus.truncate(n);
    }

    Ok(cpus)
}

/// Sizes, counts and times from the flags, each checked against its limit.
struct Limits {
    max_io_size: u64,
    icd: u64,
    maxh2cdata: u32,
    dma_memory: usize,
    idle_poll: std::time::Duration,
    connect_timeout: std::time::Duration,
    pdu_timeout: std::time::Duration,
    socket_buffer: usize,
}

fn check_limits(args: &ServeArgs) -> Result<Limits, String> {
    if !(MIN_QUEUE_DEPTH..=MAX_QUEUE_DEPTH).contains(&args.queue_depth) {
        return Err(format!(
            "--queue-depth {}: between {MIN_QUEUE_DEPTH} and {MAX_QUEUE_DEPTH}",
            args.queue_depth
        ));
    }
    let max_io_size = parse_size(&args.max_io_size).map_err(|e| format!("--max-io-size: {e}"))?;
    if !max_io_size.is_power_of_two() || !(4096..=MAX_MAX_IO_SIZE as u64).contains(&max_io_size) {
        return Err(format!(
            "--max-io-size {}: a power of two from 4K to {}M",
            args.max_io_size,
            MAX_MAX_IO_SIZE >> 20
        ));
    }
    let icd = parse_size(&args.in_capsule_data).map_err(|e| format!("--in-capsule-data: {e}"))?;
    if icd % 16 != 0 || icd > MAX_IN_CAPSULE_DATA as u64 {
        return Err(format!(
            "--in-capsule-data {}: a multiple of 16 up to {}K",
            args.in_capsule_data,
            MAX_IN_CAPSULE_DATA >> 10
        ));
    }
    let idle_poll = parse_duration(&args.idle_poll).map_err(|e| format!("--idle-poll: {e}"))?;
    if idle_poll > MAX_IDLE_POLL {
        return Err(format!(
            "--idle-poll: at most {} ms",
            MAX_IDLE_POLL.as_millis()
        ));
    }
    if let Some(cc) = &args.tcp_congestion {
        crate::transport::socket::check_congestion(cc)
            .map_err(|e| format!("--tcp-congestion {cc}: {e}"))?;
    }
    let dma_memory =
        parse_size(&args.dma_memory).map_err(|e| format!("--dma-memory: {e}"))? as usize;
    if dma_memory < (1 << 20) {
        return Err("--dma-memory: at least 1M".into());
    }
    let maxh2cdata = max_h2c_data(args.max_h2c_data.as_deref(), max_io_size)?;
    check_counts(args)?;
    let timeout = |flag: &str, v: &str| -> Result<std::time::Duration, String> {
        let d = parse_duration(v).map_err(|e| format!("{flag}: {e}"))?;
        if d < MIN_SETUP_TIMEOUT || d > MAX_SETUP_TIMEOUT {
            return Err(format!(
                "{flag} {v}: from {} ms to {} s",
                MIN_SETUP_TIMEOUT.as_millis(),
                MAX_SETUP_TIMEOUT.as_secs()
            ));
        }
        Ok(d)
    };
    let connect_timeout = timeout("--connect-timeout", &args.connect_timeout)?;
    let pdu_timeout = timeout("--pdu-timeout", &args.pdu_timeout)?;
    let socket_buffer = socket_buffer(args.socket_buffer.as_deref())?;

    Ok(Limits {
        max_io_size,
        icd,
        maxh2cdata,
        dma_memory,
        idle_poll,
        connect_timeout,
        pdu_timeout,
        socket_buffer,
    })
}

/// `--max-h2c-data`, or the largest H2CData PDU the I/O size allows.
fn max_h2c_data(arg: Option<&str>, max_io_size: u64) -> Result<u32, String> {
    let Some(v) = arg else {
        return Ok((max_io_size as u32).min(MAX_H2C_DATA));
    };
    let n = parse_size(v).map_err(|e| format!("--max-h2c-data: {e}"))?;
    // NVMe/TCP 1.0 §3.6.2.3: MAXH2CDATA is at least 4 KiB, in 4-byte units.
    if n < 4096 || n % 4 != 0 || n > max_io_size {
        return Err(format!(
            "--max-h2c-data {v}: a multiple of 4 from 4K to --max-io-size"
        ));
    }
    Ok(n as u32)
}

/// The per-core and per-controller counts.
fn check_counts(args: &ServeArgs) -> Result<(), String> {
    if !(1..=MAX_IO_QUEUES).contains(&args.max_io_queues) {
        return Err(format!("--max-io-queues: 1 to {MAX_IO_QUEUES}"));
    }
    if !(1..=MAX_CONNECTIONS_PER_CORE).contains(&args.max_connections) {
        return Err(format!(
            "--max-connections: 1 to {MAX_CONNECTIONS_PER_CORE}"
        ));
    }
    if !(1..=MAX_CONTROLLERS_PER_CORE).contains(&args.max_controllers) {
        return Err(format!(
            "--max-controllers: 1 to {MAX_CONTROLLERS_PER_CORE}"
        ));
    }
    if !(1..=MAX_CONTROLLERS_PER_CORE).contains(&args.max_controllers_per_host) {
        return Err(format!(
            "--max-controllers-per-host: 1 to {MAX_CONTROLLERS_PER_CORE}"
        ));
    }
    Ok(())
}

/// `--socket-buffer`: a size the kernel grants in full, or 0. Without the
/// flag, the default where the kernel grants it, else autotuning.
fn socket_buffer(arg: Option<&str>) -> Result<usize, String> {
    use crate::transport::socket::check_buffers;
    let Some(v) = arg else {
        return Ok(match check_buffers(DEFAULT_SOCKET_BUFFER) {
            Ok(()) => DEFAULT_SOCKET_BUFFER,
            Err(e) => {
                log::info!("socket buffers left to the kernel: {e}");
                0
            }
        });
    };
    if v == "0" {
        return Ok(0);
    }
    let n = parse_size(v).map_err(|e| format!("--socket-buffer: {e}"))?;
    if n > MAX_SOCKET_BUFFER as u64 {
        return Err(format!(
            "--socket-buffer {v}: at most {}M",
            MAX_SOCKET_BUFFER >> 20
        ));
    }
    check_buffers(n as usize).map_err(|e| format!("--socket-buffer {v}: {e}"))?;
    Ok(n as usize)
}

/// A subsystem as the flags describe it, before its namespaces are opened.
struct Draft {
    nqn: String,
    specs: Vec<NamespaceSpec>,
    hosts: Vec<String>,
    any: bool,
}

/// Subsystems, namespaces and hosts, in command-line order: a namespace or
/// host belongs to the last `--subsystem` before it; hosts before any
/// subsystem apply to all, and to the embedded default when no subsystem is
/// named. Returns the drafts with those global hosts merged.
fn subsystem_drafts(
    args: &ServeArgs,
    sub_idx: &[usize],
    ns_idx: &[usize],
    host_idx: &[usize],
    any_idx: &[usize],
) -> Result<Vec<Draft>, String> {
    let items = flag_items(args, sub_idx, ns_idx, host_idx, any_idx);
    let mut global_hosts = Vec::new();
    let mut global_any = false;
    let mut drafts: Vec<Draft> = Vec::new();
    for it in items {
        match it {
            Item::Sub(nqn) => {
                check_nqn(nqn).map_err(|e| format!("--subsystem: {e}"))?;
                if drafts.iter().any(|d| d.nqn == nqn) || nqn == crate::wire::fabrics::DISCOVERY_NQN
                {
                    return Err(format!("--subsystem {nqn}: named twice or reserved"));
                }
                drafts.push(Draft {
                    nqn: nqn.to_string(),
                    specs: vec![],
                    hosts: vec![],
                    any: false,
                });
            }
            Item::Ns(spec) => {
                let s = parse_namespace_spec(spec).map_err(|e| format!("--namespace: {e}"))?;
                if drafts.is_empty() {
                    drafts.push(Draft {
                        nqn: DEFAULT_SUBSYSTEM_NQN.to_string(),
                        specs: vec![],
                        hosts: vec![],
                        any: false,
                    });
                }
                drafts.last_mut().unwrap().specs.push(s);
            }
            Item::Host(h) => {
                check_nqn(h).map_err(|e| format!("--allow-host: {e}"))?;
                match drafts.last_mut() {
                    Some(d) => d.hosts.push(h.to_string()),
                    None => global_hosts.push(h.to_string()),
                }
            }
            Item::Any => match drafts.last_mut() {
                Some(d) => d.any = true,
                None => global_any = true,
            },
        }
    }
    // No subsystem named: the embedded default, under the global host rule.
    if drafts.is_empty() {
        drafts.push(embedded_default()?);
    }
    for d in &mut drafts {
        let mut hosts = global_hosts.clone();
        hosts.append(&mut d.hosts);
        d.hosts = hosts;
        d.any |= global_any;
    }
    Ok(drafts)
}

/// A subsystem flag, a namespace, a host or `--allow-any-host`.
enum Item<'a> {
    Sub(&'a str),
    Ns(&'a str),
    Host(&'a str),
    Any,
}

/// The subsystem-shaping flags in command-line order (clap gives each
/// flag's values with their argv indices).
fn flag_items<'a>(
    args: &'a ServeArgs,
    sub_idx: &[usize],
    ns_idx: &[usize],
    host_idx: &[usize],
    any_idx: &[usize],
) -> Vec<Item<'a>> {
    let mut items: Vec<(usize, Item)> = Vec::new();
    items.extend(
        sub_idx
            .iter()
            .zip(&args.subsystem)
            .map(|(&i, s)| (i, Item::Sub(s))),
    );
    items.extend(
        ns_idx
            .iter()
            .zip(&args.namespace)
            .map(|(&i, s)| (i, Item::Ns(s))),
    );
    items.extend(
        host_idx
            .iter()
            .zip(&args.allow_host)
            .map(|(&i, s)| (i, Item::Host(s))),
    );
    items.extend(any_idx.iter().map(|&i| (i, Item::Any)));
    items.sort_by_key(|(i, _)| *i);
    items.into_iter().map(|(_, it)| it).collect()
}

/// The embedded default: one sparse file namespace, created if missing.
fn embedded_default() -> Result<Draft, String> {
    let path = PathBuf::from(DEFAULT_DATA_DIR).join(DEFAULT_DATA_FILE);
    file::create_sparse(&path, DEFAULT_DATA_FILE_SIZE)?;
    Ok(Draft {
        nqn: DEFAULT_SUBSYSTEM_NQN.to_string(),
        specs: vec![NamespaceSpec {
            backing: Backing::File(path),
            block_size: None,
            bad_blocks: Vec::new(),
        }],
        hosts: vec![],
        any: false,
    })
}

/// The subsystems to serve: each one's host rule (loopback-only listeners admit any host; others need
/// an explicit choice), and its namespaces opened and checked.
fn resolve_subsystems(
    args: &ServeArgs,
    drafts: Vec<Draft>,
    listen: &[SocketAddr],
) -> Result<Vec<SubsystemConfig>, String> {
    if drafts.len() > MAX_SUBSYSTEMS {
        return Err(format!("at most {MAX_SUBSYSTEMS} subsystems"));
    }
    let all_loopback = listen.iter().all(|a| a.ip().is_loopback());
    let mut subsystems = Vec::new();
    for d in drafts {
        let hosts = d.hosts;
        let mut any = d.any;
        if hosts.is_empty() && !any {
            if all_loopback {
                // Only this machine can reach a loopback listener.
                any = true;
            } else {
                return Err(format!(
                    "subsystem {} would be open to every host on {}: give --allow-host NQN, or --allow-any-host to accept that",
                    d.nqn,
                    listen
                        .iter()
                        .filter(|a| !a.ip().is_loopback())
                        .map(|a| a.to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
            }
        }
        if d.specs.len() > MAX_NAMESPACES {
            return Err(format!("{}: at most {MAX_NAMESPACES} namespaces", d.nqn));
        }
        let mut namespaces = Vec::new();
        for (i, spec) in d.specs.into_iter().enumerate() {
            namespaces.push(resolve_namespace(&d.nqn, (i + 1) as u32, spec)?);
        }
        subsystems.push(SubsystemConfig {
            serial: args
                .serial
                .clone()
                .unwrap_or_else(|| default_serial(&d.nqn)),
            model: args.model.clone(),
            nqn: d.nqn,
            allow_any_host: any,
            hosts,
            namespaces,
        });
    }
    Ok(subsystems)
}

fn resolve_namespace(nqn: &str, nsid: u32, spec: NamespaceSpec) -> Result<NamespaceConfig, String> {
    let mut physical = 0;
    let (backing, size, min_block, default_bs) = match spec.backing {
        Backing::File(p) => {
            let probe = file::probe(&p)?;
            physical = probe.physical_block;
            let bs_default = if probe.is_block {
                probe.logical_block
            } else {
                4096
            };
            let b = if probe.is_block {
                Backing::Block(p)
            } else {
                Backing::File(p)
            };
            (b, probe.size, probe.logical_block, bs_default)
        }
        b @ (Backing::Ram(s) | Backing::Null(s)) => (b, s, 512, 4096),
        Backing::Block(_) => unreachable!("specs name files; probing finds block devices"),
    };
    let bs = spec.block_size.unwrap_or(default_bs);
    let what = match &backing {
        Backing::File(p) | Backing::Block(p) => p.display().to_string(),
        Backing::Ram(s) => format!("ram:{s}"),
        Backing::Null(s) => format!("null:{s}"),
    };
    if bs < min_block {
        return Err(format!(
            "{what}: block size {bs} is smaller than the device's {min_block}-byte O_DIRECT unit"
        ));
    }
    if size == 0 {
        return Err(format!("{what}: size is zero"));
    }
    if size % bs as u64 != 0 {
        return Err(format!(
            "{what}: size {size} is not a multiple of the block size {bs}"
        ));
    }
    // Identify promises that one block survives a power cut whole (AWUPF
    // 0, the least NVMe can say); a device that writes smaller units
    // atomically may tear a larger block.
    if physical != 0 && bs > physical {
        log::warn!(
            "{what}: block size {bs} is larger than the device's physical block ({physical} bytes): a block may be torn by a power cut; serve it with bs={physical} to keep Identify's promise"
        );
    }
    let blocks = size / bs as u64;
    if let Some((a, b)) = spec.bad_blocks.iter().find(|(_, b)| *b >= blocks) {
        return Err(format!(
            "{what}: badblocks={a}-{b} is past the last block ({})",
            blocks - 1
        ));
    }
    let (nguid, uuid, eui64) = namespace_ids(nqn, nsid);
    Ok(NamespaceConfig {
        nsid,
        backing,
        block_size: bs,
        size_bytes: size,
        nguid,
        uuid,
        eui64,
        bad_blocks: spec.bad_blocks,
    })
}
