//! Arbitrary byte streams against the real connection state machine
//! (`transport::tcp::serve`) over loopback TCP, inside one in-process glommio
//! executor that lives as long as the fuzzing process.
//!
//! Input: byte 0 picks a prelude (`% 3`): 0 = none (raw stream from the first
//! byte, ICReq included); 1 = the harness prepends ICReq, an admin Connect and
//! CC.EN=1; 2 = the harness first brings up a separate admin connection
//! (ICReq, Connect, CC.EN=1, reading the replies to learn the cntlid), then
//! prepends ICReq and an I/O Connect (qid 1, that cntlid) to the fuzz bytes;
//! the admin connection is closed after the fuzz connection ends. Byte 1
//! chooses the digests of the canned parts (bit 0 header, bit 1 data). The
//! rest is written to the connection as is.
//!
//! Per input the client writes everything (write errors ignored: the target
//! may close first), shuts down its write side and reads until EOF while it
//! writes; the target must close within `QUEUE_FUZZ_CLOSE_TIMEOUT_MS`
//! (default 15000 ms, counted from the connect; above the 5 s drain limit
//! of a closing queue, which some inputs legitimately hit). Then:
//! no DMA memory in use, no controller, no I/O controller left on the shard.
//!
//! Seeds: `fuzz/seeds/queue/` (from `cargo run --example make_seeds` in
//! fuzz/). The corpus directory cargo-fuzz uses (fuzz/corpus/queue) is
//! git-ignored, so at start-up the seeds are copied into the first corpus
//! directory given on the command line when they are not there yet.
//!
//! `QUEUE_FUZZ_VERBOSE=1` prints what the target answers to each input (to
//! check seeds: `cargo fuzz run -O --sanitizer none queue fuzz/seeds/queue/*`).
#![no_main]

use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::{TcpListener, TcpStream};
use glommio::{LocalExecutor, LocalExecutorBuilder, Placement};
use libfuzzer_sys::fuzz_target;
use nvmf_tpc::nvme::Namespace;
use nvmf_tpc::shard::{self, Shard};
use nvmf_tpc::storage::{Backend, RamDisk};
use nvmf_tpc::transport::tcp;
use nvmf_tpc::trigger::Trigger;
use nvmf_tpc::wire::command::Cqe;
use nvmf_tpc::wire::pdu::{self, pdu_type, CommonHeader, Digests, Direction};
use nvmf_tpc_fuzz as s;
use std::cell::OnceCell;
use std::net::SocketAddr;
use std::os::unix::io::AsRawFd;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Everything built once per process. Leaked on purpose: nothing here may be
/// dropped outside the executor (or at process exit).
struct Harness {
    ex: LocalExecutor,
    env: OnceCell<Env>,
    close_timeout: Duration,
    verbose: bool,
}

struct Env {
    shard: Rc<Shard>,
    ram: Arc<RamDisk>,
    listener: TcpListener,
    addr: SocketAddr,
}

thread_local! {
    static HARNESS: &'static Harness = Box::leak(Box::new(Harness::new()));
}

impl Harness {
    fn new() -> Harness {
        let cfg = s::target_config();
        let ex = LocalExecutorBuilder::new(Placement::Unbound)
            .name("queue-fuzz")
            .io_memory(cfg.dma_memory)
            .make()
            .expect("cannot make the glommio executor (io_uring and locked memory needed)");
        let close_timeout = Duration::from_millis(
            std::env::var("QUEUE_FUZZ_CLOSE_TIMEOUT_MS")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(15_000),
        );
        let verbose = std::env::var_os("QUEUE_FUZZ_VERBOSE").is_some_and(|v| v != "0");
        Harness {
            ex,
            env: OnceCell::new(),
            close_timeout,
            verbose,
        }
    }
}

/// The shard as `serve::start_shard` builds it, for one RAM namespace.
async fn build_env() -> Env {
    let cfg = Arc::new(s::target_config());
    let (senders, receivers) = shard::mesh(1)
        .join()
        .await
        .unwrap_or_else(|_| panic!("cannot join the control mesh"));
    let ram = Arc::new(RamDisk::new(s::NS_BYTES).expect("ram disk"));
    let mut namespaces = Vec::new();
    for sub in &cfg.subsystems {
        let mut v = Vec::new();
        for n in &sub.namespaces {
            // As serve::start_shard: one per-core handle on the shared disk.
            let backend = Backend::Ram(Rc::new(ram.clone()));
            v.push(Rc::new(Namespace::new(n.clone(), backend, Arc::default())));
        }
        namespaces.push(v);
    }
    let hosts = Arc::new(nvmf_tpc::admission::HostTable::new(16));
    let balance = nvmf_tpc::balance::Balance::new(1);
    let shard = Rc::new(Shard::new(cfg, namespaces, senders, hosts, balance));
    shard.spawn_receivers(receivers);
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    let addr = listener.local_addr().expect("listener address");
    Env {
        shard,
        ram,
        listener,
        addr,
    }
}

/// Copy the committed seeds into the first corpus directory on the command
/// line (cargo-fuzz passes fuzz/corpus/queue, which git ignores).
fn install_seeds() {
    let seeds = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("seeds/queue");
    let Some(corpus) = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .map(std::path::PathBuf::from)
        .find(|p| p.is_dir())
    else {
        return;
    };
    if corpus.canonicalize().ok() == seeds.canonicalize().ok() {
        return;
    }
    let Ok(entries) = std::fs::read_dir(&seeds) else {
        return;
    };
    for e in entries.flatten() {
        let dst = corpus.join(format!("seed-{}", e.file_name().to_string_lossy()));
        if !dst.exists() {
            let _ = std::fs::copy(e.path(), dst);
        }
    }
}

fuzz_target!(init: install_seeds(), |data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    HARNESS.with(|h| {
        h.ex.run(async {
            if h.env.get().is_none() {
                let env = build_env().await;
                let _ = h.env.set(env);
            }
            one_input(h, h.env.get().unwrap(), data).await;
        })
    });
});

async fn one_input(h: &Harness, env: &Env, data: &[u8]) {
    env.ram.zero(0, s::NS_BYTES);
    let mode = data[0] % 3;
    let d = s::digests_of(data[1]);
    let body = &data[2..];
    let mut admin = None;
    let mut stream = Vec::with_capacity(body.len() + 2048);
    match mode {
        s::MODE_RAW => {}
        s::MODE_ADMIN => stream.extend(s::admin_prelude(d)),
        _ => {
            let (conn, cntlid) = open_admin(h, env, d).await;
            stream.extend(s::io_prelude(cntlid, d));
            admin = Some(conn);
        }
    }
    stream.extend_from_slice(body);

    let (client, serve) = connect(env).await;
    let got = guarded(h, "the fuzz connection", exchange(client, &stream)).await;
    guarded(h, "serve() of the fuzz connection", serve).await;
    if h.verbose {
        eprintln!("mode {mode} digests {d:?}: target sent:");
        describe(&got, d);
    }
    if let Some(a) = admin {
        a.close(h).await;
    }
    check_clean(env).await;
}

/// Await `f`, or panic if it takes longer than the close timeout.
async fn guarded<T>(h: &Harness, what: &str, f: impl std::future::Future<Output = T>) -> T {
    let limit = h.close_timeout;
    futures_lite::future::or(f, async move {
        glommio::timer::sleep(limit).await;
        panic!(
            "{what}: the target did not close the connection within {limit:?} although the host \
             sent everything and shut down its write side (QUEUE_FUZZ_CLOSE_TIMEOUT_MS)"
        );
    })
    .await
}

/// A client connection and the target's `serve` of its accepted end.
async fn connect(env: &Env) -> (TcpStream, glommio::Task<()>) {
    let client = TcpStream::connect(env.addr)
        .await
        .expect("connect to the harness listener");
    let server = env.listener.accept().await.expect("accept");
    let serve = glommio::spawn_local(tcp::serve(
        env.shard.clone(),
        server,
        Rc::new(Trigger::new()),
        env.shard.balance.place(env.shard.id),
    ));
    (client, serve)
}

/// Write all of `bytes` then half-close, while reading until EOF; returns
/// what was read.
async fn exchange(client: TcpStream, bytes: &[u8]) -> Vec<u8> {
    let fd = client.as_raw_fd();
    let (mut r, mut w) = futures_lite::io::split(client);
    let write = async {
        let _ = w.write_all(bytes).await;
        let _ = w.flush().await;
        // SAFETY: shutting down the write side of our own open socket.
        unsafe { libc::shutdown(fd, libc::SHUT_WR) };
    };
    let read = async {
        let mut got = Vec::new();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match r.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
        got
    };
    let ((), got) = futures_lite::future::zip(write, read).await;
    drop((r, w));
    got
}

/// Mode 2's separate, enabled admin queue.
struct AdminConn {
    client: TcpStream,
    serve: glommio::Task<()>,
}

async fn open_admin(h: &Harness, env: &Env, d: Digests) -> (AdminConn, u16) {
    let (mut client, serve) = connect(env).await;
    let _ = client.set_nodelay(true);
    client
        .write_all(&s::admin_prelude(d))
        .await
        .expect("write the admin prelude");
    let cntlid = guarded(h, "the canned admin connection", async {
        let ic = read_pdu(&mut client, d).await;
        assert_eq!(ic[0], pdu_type::IC_RESP, "canned admin: no ICResp");
        let conn = capsule_resp(&read_pdu(&mut client, d).await, "Connect");
        capsule_resp(&read_pdu(&mut client, d).await, "Property Set CC.EN=1");
        conn.dw0 as u16
    })
    .await;
    (AdminConn { client, serve }, cntlid)
}

impl AdminConn {
    async fn close(self, h: &Harness) {
        let AdminConn { client, serve } = self;
        guarded(h, "the canned admin connection", exchange(client, &[])).await;
        guarded(h, "serve() of the canned admin connection", serve).await;
    }
}

fn capsule_resp(p: &[u8], what: &str) -> Cqe {
    assert_eq!(
        p[0],
        pdu_type::CAPSULE_RESP,
        "canned admin: {what} answered by PDU type {:#x}",
        p[0]
    );
    let c = Cqe::decode(&p[8..24]);
    assert!(c.status.is_success(), "canned admin: {what} failed: {c:?}");
    c
}

/// One whole PDU from the target.
async fn read_pdu(c: &mut TcpStream, d: Digests) -> Vec<u8> {
    let mut p = vec![0u8; 8];
    c.read_exact(&mut p)
        .await
        .expect("canned admin: the target closed the connection");
    let ch = CommonHeader::decode(&p);
    let plen = ch.plen as usize;
    assert!(
        (8..1 << 20).contains(&plen),
        "canned admin: bad PDU {ch:?} (digests {d:?})"
    );
    p.resize(plen, 0);
    c.read_exact(&mut p[8..])
        .await
        .expect("canned admin: the target closed the connection");
    p
}

/// After every input: nothing the connections used is left on the shard.
/// Closing work the connections posted (Teardown, DetachIo) runs on tasks
/// of its own, so give those a bounded chance first.
async fn check_clean(env: &Env) {
    let shard = &env.shard;
    let clean = || {
        shard.dma.used() == 0
            && shard.controllers.borrow().is_empty()
            && shard.io_ctrls.borrow().is_empty()
    };
    let deadline = Instant::now() + Duration::from_secs(1);
    let mut spins = 0;
    while !clean() && Instant::now() < deadline {
        if spins < 32 {
            futures_lite::future::yield_now().await;
        } else {
            glommio::timer::sleep(Duration::from_millis(1)).await;
        }
        spins += 1;
    }
    let controllers: Vec<u16> = shard.controllers.borrow().keys().copied().collect();
    let io_ctrls: Vec<u16> = shard.io_ctrls.borrow().keys().copied().collect();
    assert_eq!(
        shard.dma.used(),
        0,
        "DMA memory still charged after every connection closed (controllers {controllers:?}, \
         io_ctrls {io_ctrls:?})"
    );
    assert!(
        controllers.is_empty(),
        "controllers left after every connection closed: {controllers:?}"
    );
    assert!(
        io_ctrls.is_empty(),
        "I/O controllers left after every connection closed: {io_ctrls:?}"
    );
}

/// Print the PDUs the target sent (QUEUE_FUZZ_VERBOSE).
fn describe(mut b: &[u8], d: Digests) {
    while b.len() >= 8 {
        let ch = CommonHeader::decode(&b[..8]);
        let dg = if matches!(ch.pdu_type, pdu_type::IC_RESP | pdu_type::C2H_TERM_REQ) {
            Digests::default()
        } else {
            d
        };
        let l = match pdu::layout(ch, Direction::ControllerToHost, dg, 1 << 24) {
            Ok(l) => l,
            Err(e) => {
                eprintln!("  undecodable PDU {ch:?}: {e:?}");
                return;
            }
        };
        let n = l.plen().min(b.len());
        let p = &b[..n];
        match ch.pdu_type {
            pdu_type::IC_RESP => eprintln!("  ICResp"),
            pdu_type::CAPSULE_RESP if n >= 24 => eprintln!("  {:?}", Cqe::decode(&p[8..24])),
            pdu_type::C2H_DATA if n >= 24 => {
                eprintln!("  C2HData {:?}", pdu::DataHeader::decode(p))
            }
            pdu_type::R2T if n >= 24 => eprintln!("  R2T {:?}", pdu::DataHeader::decode(p)),
            pdu_type::C2H_TERM_REQ => eprintln!("  C2HTermReq {:?}", pdu::decode_term_req(p)),
            t => eprintln!("  PDU type {t:#x}"),
        }
        b = &b[n..];
    }
    if !b.is_empty() {
        eprintln!("  {} trailing bytes", b.len());
    }
}
