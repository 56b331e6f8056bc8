//! `nvmf-tpc serve`: flags into a checked config (`flags`), then start one
//! pinned executor per CPU, print what is served, stop cleanly on
//! SIGINT/SIGTERM.

mod flags;
pub use flags::{command, parse_config, ServeArgs};

use crate::config::*;
use crate::nvme::Namespace;
use crate::shard::{self, Shard, STOP};
use crate::storage::block_lock::BlockLocks;
use crate::storage::{Backend, FileBackend, RamDisk};
use glommio::channels::channel_mesh::{Full, MeshBuilder};
use glommio::net::TcpListener;
use glommio::{LocalExecutorBuilder, Placement};
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::{mpsc, Arc};

/// Refuse to start on an address another process listens on: glommio binds
/// with SO_REUSEPORT, which would share the port with it silently. A test
/// bind cannot tell this apart from the TIME-WAIT sockets a killed target
/// leaves behind (which must not stop a restart), so look for listeners in
/// /proc/net/tcp{,6} instead.
fn probe_listeners(cfg: &TargetConfig) -> Result<(), String> {
    for a in &cfg.listen {
        if let Some(other) = listener_on(a) {
            return Err(format!(
                "cannot listen on {a}: another socket already listens on {other}"
            ));
        }
    }
    Ok(())
}

/// A listening TCP socket that would share `a`'s port and address.
fn listener_on(a: &SocketAddr) -> Option<SocketAddr> {
    const TCP_LISTEN: &str = "0A";
    for (table, v6) in [("/proc/net/tcp", false), ("/proc/net/tcp6", true)] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 4 || f[3] != TCP_LISTEN {
                continue;
            }
            let Some(local) = parse_proc_addr(f[1], v6) else {
                continue;
            };
            let same_ip = local.ip() == a.ip()
                || local.ip().is_unspecified()
                || a.ip().is_unspecified()
                || matches!(local.ip(), std::net::IpAddr::V6(v) if v.to_ipv4_mapped() == Some(match a.ip() {
                    std::net::IpAddr::V4(x) => x,
                    _ => std::net::Ipv4Addr::UNSPECIFIED,
                }));
            if local.port() == a.port() && same_ip {
                return Some(local);
            }
        }
    }
    None
}

/// "0100007F:1144" (IPv4) or 32 hex digits then ":port" (IPv6), as the
/// kernel prints them: address words in host (little-endian) order.
fn parse_proc_addr(s: &str, v6: bool) -> Option<SocketAddr> {
    let (ip, port) = s.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let word = |i: usize| u32::from_str_radix(ip.get(i * 8..i * 8 + 8)?, 16).ok();
    let ip = if v6 {
        let mut b = [0u8; 16];
        for i in 0..4 {
            b[i * 4..i * 4 + 4].copy_from_slice(&word(i)?.to_le_bytes());
        }
        std::net::IpAddr::from(b)
    } else {
        std::net::IpAddr::from(word(0)?.to_le_bytes())
    };
    Some(SocketAddr::new(ip, port))
}

/// What the banner says of a backing's route to the kernel.
fn route_note(path: &std::path::Path, is_block: bool) -> &'static str {
    use crate::storage::{file::route_of, route::Route};
    match route_of(path, is_block) {
        Route::Ring => "",
        Route::Aio => {
            " (reads and writes through Linux AIO: it cannot take I/O without blocking; reads by plain calls while it completes them in the call)"
        }
        Route::AioFirst => {
            " (reads and writes through Linux AIO, through io_uring where they would block)"
        }
    }
}

/// Whether the core yields to the device's thread after submitting
/// (`storage::threaded`).
fn thread_note(path: &std::path::Path) -> &'static str {
    use std::os::unix::fs::MetadataExt;
    match std::fs::metadata(path) {
        Ok(m) if crate::storage::threaded::wakes_a_thread(m.rdev()) => {
            " (its driver may work in a thread: the core yields to it once I/O went)"
        }
        _ => "",
    }
}

fn human(n: u64) -> String {
    for (u, s) in [
        (1u64 << 40, "T"),
        (1 << 30, "G"),
        (1 << 20, "M"),
        (1 << 10, "K"),
    ] {
        if n >= u && n.is_multiple_of(u) {
            return format!("{}{s}", n / u);
        }
    }
    n.to_string()
}

/// What gets printed on start.
pub fn banner(cfg: &TargetConfig) -> String {
    let mut s = String::new();
    let cpus: Vec<String> = cfg.cpus.iter().map(|c| c.to_string()).collect();
    for a in &cfg.listen {
        s += &format!(
            "nvmf-tpc {}: listening on {a} (NVMe/TCP) on {} core(s): CPU {}\n",
            FIRMWARE_REVISION,
            cfg.cpus.len(),
            cpus.join(",")
        );
    }
    for sub in &cfg.subsystems {
        let hosts = if sub.allow_any_host {
            "any host".to_string()
        } else {
            sub.hosts.join(", ")
        };
        s += &format!(
            "subsystem {} (serial {}; allowed: {hosts})\n",
            sub.nqn, sub.serial
        );
        for ns in &sub.namespaces {
            let what = match &ns.backing {
                Backing::File(p) => format!("file {}{}", p.display(), route_note(p, false)),
                Backing::Block(p) => {
                    let thread = thread_note(p);
                    format!(
                        "block device {}{}{thread}",
                        p.display(),
                        route_note(p, true)
                    )
                }
                Backing::Ram(_) => "ram (volatile)".into(),
                Backing::Null(_) => "null (discards writes)".into(),
            };
            s += &format!(
                "  namespace {}: {what}, {} bytes ({}), {}-byte blocks\n",
                ns.nsid,
                ns.size_bytes,
                human(ns.size_bytes),
                ns.block_size
            );
        }
        let a = cfg.listen[0];
        let addr = if a.ip().is_unspecified() {
            "<this-host-address>".to_string()
        } else {
            a.ip().to_string()
        };
        s += &format!(
            "  connect with: nvme connect -t tcp -a {addr} -s {} -n {}\n",
            a.port(),
            sub.nqn
        );
    }
    s
}

/// What every core shares: created once, before the executors start.
#[derive(Clone)]
struct Shared {
    cfg: Arc<TargetConfig>,
    /// RAM disks, per subsystem and namespace (None for other backings).
    rams: Arc<Vec<Vec<Option<Arc<RamDisk>>>>>,
    /// One block lock table per namespace, whichever core serves it.
    locks: Arc<Vec<Vec<Arc<BlockLocks>>>>,
    mesh: MeshBuilder<shard::CtlMsg, Full>,
    hosts: Arc<crate::admission::HostTable>,
    balance: Arc<crate::balance::Balance>,
}

impl Shared {
    fn new(cfg: TargetConfig) -> Result<Shared, String> {
        let mut rams = Vec::new();
        for s in &cfg.subsystems {
            let mut v = Vec::new();
            for n in &s.namespaces {
                v.push(match n.backing {
                    Backing::Ram(sz) => Some(Arc::new(RamDisk::new(sz)?)),
                    _ => None,
                });
            }
            rams.push(v);
        }
        let locks = cfg
            .subsystems
            .iter()
            .map(|s| s.namespaces.iter().map(|_| Arc::default()).collect())
            .collect();
        Ok(Shared {
            mesh: shard::mesh(cfg.cpus.len()),
            hosts: Arc::new(crate::admission::HostTable::new(
                cfg.max_controllers_per_host,
            )),
            balance: crate::balance::Balance::new(cfg.cpus.len()),
            rams: Arc::new(rams),
            locks: Arc::new(locks),
            cfg: Arc::new(cfg),
        })
    }
}

/// Start every executor and serve until SIGINT/SIGTERM (or `STOP`).
/// Returns an error when any executor could not start.
pub fn run(cfg: TargetConfig) -> Result<(), String> {
    probe_listeners(&cfg)?;
    let shared = Shared::new(cfg)?;
    let cfg = shared.cfg.clone();
    let (ready_tx, ready_rx) = mpsc::channel::<Result<(), String>>();
    let mut handles = Vec::new();
    for (i, &cpu) in cfg.cpus.iter().enumerate() {
        handles.push(spawn_core(i, cpu, shared.clone(), ready_tx.clone())?);
    }
    drop(ready_tx);
    if let Some(e) = wait_started(&ready_rx, cfg.cpus.len()) {
        STOP.store(true, Ordering::Relaxed);
        for h in handles {
            let _ = h.join();
        }
        return Err(e);
    }
    print!("{}", banner(&cfg));
    log::info!("serving; stop with SIGINT or SIGTERM");
    let mut flushed = true;
    for h in handles {
        match h.join() {
            Ok(ok) => flushed &= ok,
            Err(_) => return Err("an executor failed".into()),
        }
    }
    if !flushed {
        return Err(
            "stopped, but a backing failed to flush: data acknowledged without FUA may be lost"
                .into(),
        );
    }
    log::info!("stopped");
    Ok(())
}

/// The first error any core reported while starting, once each has said.
fn wait_started(ready: &mpsc::Receiver<Result<(), String>>, cores: usize) -> Option<String> {
    let mut failure = None;
    for _ in 0..cores {
        match ready.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                failure.get_or_insert(e);
            }
            Err(_) => {
                failure.get_or_insert("an executor died while starting".into());
            }
        }
    }
    failure
}

/// Core `i`'s executor, pinned to `cpu`: it says on `ready` whether it
/// started, serves until stopped, and returns whether its backings flushed.
fn spawn_core(
    i: usize,
    cpu: usize,
    shared: Shared,
    ready: mpsc::Sender<Result<(), String>>,
) -> Result<glommio::ExecutorJoinHandle<bool>, String> {
    let cfg = &shared.cfg;
    let mut b = LocalExecutorBuilder::new(Placement::Fixed(cpu))
        .name(&format!("nvmf-tpc-{i}"))
        .io_memory(cfg.dma_memory);
    if !cfg.idle_poll.is_zero() {
        b = b.spin_before_park(cfg.idle_poll);
    }
    b.spawn(move || async move {
        match start_core(i, cpu, shared).await {
            Ok(shard) => {
                let _ = ready.send(Ok(()));
                shard::wait_for_stop().await;
                // True when every backing flushed.
                shard.shutdown().await
            }
            Err(e) => {
                let _ = ready.send(Err(e));
                true
            }
        }
    })
    .map_err(|e| format!("cannot start an executor on CPU {cpu}: {e}"))
}

/// On core `i`'s executor: join the control mesh, make the core's polling
/// state, open its namespaces and listeners, and start serving.
async fn start_core(i: usize, cpu: usize, shared: Shared) -> Result<Rc<Shard>, String> {
    let Shared {
        cfg,
        rams,
        locks,
        mesh,
        hosts,
        balance,
    } = shared;
    let (senders, receivers) = mesh
        .join()
        .await
        .map_err(|_| "cannot join the control mesh".to_string())?;
    crate::storage::uring::set_window(if cfg.idle_poll.is_zero() {
        std::time::Duration::ZERO
    } else {
        crate::storage::uring::IO_POLL
    });
    // This core's epoll set, made now: a failure shows at start, and the
    // descriptor count stays flat while hosts come and go.
    if !cfg.idle_poll.is_zero() {
        crate::transport::readiness::prepare()
            .map_err(|e| format!("cannot create an epoll set: {e}"))?;
    }
    // Its thread id, for `top -H`, perf and tests: glommio gives the
    // executor and its blocking pool the same thread name.
    // SAFETY: gettid has no arguments and cannot fail.
    let tid = unsafe { libc::gettid() };
    log::debug!("core {i} runs on thread {tid} (CPU {cpu})");
    let (shard, listeners) = start_shard(cfg, rams, locks, senders, hosts, balance).await?;
    shard.spawn_receivers(receivers);
    glommio::spawn_local(crate::transport::listener::serve_handed(shard.clone())).detach();
    for l in listeners {
        glommio::spawn_local(crate::transport::listener::serve_listener(shard.clone(), l)).detach();
    }
    Ok(shard)
}

async fn start_shard(
    cfg: Arc<TargetConfig>,
    rams: Arc<Vec<Vec<Option<Arc<RamDisk>>>>>,
    locks: Arc<Vec<Vec<Arc<BlockLocks>>>>,
    senders: glommio::channels::channel_mesh::Senders<shard::CtlMsg>,
    hosts: Arc<crate::admission::HostTable>,
    balance: Arc<crate::balance::Balance>,
) -> Result<(Rc<Shard>, Vec<TcpListener>), String> {
    let mut namespaces = Vec::new();
    let mut zeroes = None;
    for (si, s) in cfg.subsystems.iter().enumerate() {
        let mut v = Vec::new();
        for (ni, n) in s.namespaces.iter().enumerate() {
            let backend = match &n.backing {
                Backing::File(p) | Backing::Block(p) => {
                    let is_block = matches!(n.backing, Backing::Block(_));
                    let f = FileBackend::open(p, is_block)
                        .map_err(|e| format!("{}: {e}", p.display()))?;
                    Backend::File(Rc::new(f))
                }
                Backing::Ram(_) => {
                    Backend::Ram(Rc::new(rams[si][ni].clone().expect("ram disk created")))
                }
                Backing::Null(_) => Backend::Null(
                    zeroes
                        .get_or_insert_with(|| {
                            crate::storage::zero_buffer(cfg.max_io_size as usize)
                        })
                        .clone(),
                ),
            };
            v.push(Rc::new(Namespace::new(
                n.clone(),
                backend,
                locks[si][ni].clone(),
            )));
        }
        namespaces.push(v);
    }
    let mut listeners = Vec::new();
    for a in &cfg.listen {
        listeners.push(TcpListener::bind(a).map_err(|e| format!("cannot listen on {a}: {e}"))?);
    }
    Ok((
        Rc::new(Shard::new(cfg, namespaces, senders, hosts, balance)),
        listeners,
    ))
}

/// Install SIGINT/SIGTERM handling: the first signal stops the target.
pub fn install_signal_handler() -> Result<(), String> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let mut signals =
        signal_hook::iterator::Signals::new([SIGINT, SIGTERM]).map_err(|e| e.to_string())?;
    std::thread::Builder::new()
        .name("nvmf-tpc-signals".into())
        .spawn(move || {
            if let Some(sig) = signals.forever().next() {
                log::info!("signal {sig}: stopping (finishing in-flight commands, flushing)");
                STOP.store(true, Ordering::Relaxed);
            }
        })
        .map_err(|e| e.to_string())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_net_addresses() {
        assert_eq!(
            parse_proc_addr("0100007F:1144", false),
            Some("127.0.0.1:4420".parse().unwrap())
        );
        assert_eq!(
            parse_proc_addr("00000000000000000000000000000000:1144", true),
            Some("[::]:4420".parse().unwrap())
        );
        assert_eq!(parse_proc_addr("zz:1", false), None);
    }

    #[test]
    fn a_live_listener_is_found() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let a = l.local_addr().unwrap();
        assert_eq!(listener_on(&a), Some(a));
        drop(l);
        assert_eq!(listener_on(&a), None);
    }
}
