//! What this machine's kernel and memory allow, with no NVMe/TCP at all: the
//! bar for the target's figures on the machine it runs on (perf-reference.md
//! was measured on another CPU).
//!
//! - `memcpy`: one core copying 128 KiB chunks out of a 1 GiB RAM region (the
//!   copy every RAM-namespace read pays, in the kernel's `sendmsg`).
//! - `stream`: one core sending a 24-byte header plus a block read from that
//!   region, 8 (128 KiB) or 16 (4 KiB) per `sendmsg`, over loopback TCP to a
//!   reader on another core that takes 1 MiB per `recv`. Sequential for
//!   128 KiB, random for 4 KiB. Both ends poll non-blocking sockets, as the
//!   target and `nvmf-tpc perf` do under load. No requests: one way, so
//!   an upper bound for a read workload, not a round trip. Run with the
//!   system's congestion control and with cubic (BBR paces, and its timers
//!   cost loopback senders a lot).
//!
//! `cargo run --release --example ceiling -- --send-cpu 0 --recv-cpu 1`
//! (perf/ceiling.sh and perf/latency.sh run it.)

use clap::Parser;
use std::io::{IoSlice, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

/// The RAM region blocks are read from (as the perf matrix's namespaces).
const REGION: usize = 1 << 30;
/// PDU header bytes sent before each block (a C2HData header).
const HEADER: usize = 24;
/// What the reader asks for per `recv`.
const RECV_LEN: usize = 1 << 20;

#[derive(Parser)]
#[command(about = "Bare loopback TCP and memory copy rates of this machine")]
struct Args {
    /// CPU of the sender (the target's core in perf/latency.sh).
    #[arg(long, default_value_t = 0)]
    send_cpu: usize,
    /// CPU of the reader (the client's core).
    #[arg(long, default_value_t = 1)]
    recv_cpu: usize,
    /// Seconds per measurement.
    #[arg(long, default_value_t = 3.0)]
    time: f64,
    /// Also write the results here as JSON.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
}

struct Region(*mut u8);

// SAFETY: written once before any sharing, then only read.
unsafe impl Send for Region {}
unsafe impl Sync for Region {}

impl Region {
    fn new() -> Region {
        // SAFETY: a fresh private anonymous mapping, checked.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                REGION,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert!(p != libc::MAP_FAILED, "cannot map 1 GiB");
        // SAFETY: advice on our mapping (huge pages, as the RAM disk asks).
        unsafe { libc::madvise(p, REGION, libc::MADV_HUGEPAGE) };
        // SAFETY: the mapping is REGION bytes, ours alone here.
        let s = unsafe { std::slice::from_raw_parts_mut(p as *mut u8, REGION) };
        for (i, b) in s.iter_mut().enumerate().step_by(64) {
            *b = i as u8;
        }
        Region(p as *mut u8)
    }

    fn block(&self, off: usize, len: usize) -> &[u8] {
        assert!(off + len <= REGION);
        // SAFETY: inside the mapping, which lives as long as self.
        unsafe { std::slice::from_raw_parts(self.0.add(off), len) }
    }
}

fn pin(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t is empty; sched_setaffinity on this thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of_val(&set), &set);
    }
}

/// User plus system CPU time of the calling thread.
fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid out pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

struct Rate {
    name: String,
    /// "memcpy" or "stream".
    kind: &'static str,
    block: usize,
    /// Congestion control of a stream.
    cc: String,
    bytes_per_s: f64,
    blocks_per_s: f64,
    /// Share of the sending core busy (1.0 = all of it).
    sender_busy: f64,
}

fn memcpy(region: &Region, cpu: usize, time: Duration) -> Rate {
    pin(cpu);
    let bs = 128 << 10;
    let mut dst = vec![0u8; bs];
    let (mut off, mut n) = (0usize, 0u64);
    let t = Instant::now();
    while t.elapsed() < time {
        for _ in 0..64 {
            dst.copy_from_slice(region.block(off, bs));
            std::hint::black_box(&mut dst);
            off = (off + bs) % REGION;
            n += 1;
        }
    }
    let s = t.elapsed().as_secs_f64();
    Rate {
        name: "memcpy 128 KiB from 1 GiB, one core".into(),
        kind: "memcpy",
        block: bs,
        cc: String::new(),
        bytes_per_s: (n * bs as u64) as f64 / s,
        blocks_per_s: n as f64 / s,
        sender_busy: 1.0,
    }
}

/// xorshift: random 4 KiB blocks without a dependency.
fn next(x: &mut u64) -> u64 {
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    *x
}

fn stream(region: &Region, a: &Args, bs: usize, batch: usize, cc: Option<&str>) -> Option<Rate> {
    let l = TcpListener::bind("127.0.0.1:0").ok()?;
    let addr = l.local_addr().ok()?;
    let recv_cpu = a.recv_cpu;
    let reader = std::thread::spawn(move || {
        pin(recv_cpu);
        let mut c = TcpStream::connect(addr).expect("connect");
        c.set_nonblocking(true).expect("non-blocking");
        let mut buf = vec![0u8; RECV_LEN];
        loop {
            match c.read(&mut buf) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(_) => break,
            }
        }
    });
    pin(a.send_cpu);
    let (mut s, _) = l.accept().ok()?;
    s.set_nodelay(true).ok()?;
    s.set_nonblocking(true).ok()?;
    let used = match cc {
        Some(name) => {
            if socket2::SockRef::from(&s)
                .set_tcp_congestion(name.as_bytes())
                .is_err()
            {
                return None;
            }
            name.to_string()
        }
        None => socket2::SockRef::from(&s)
            .tcp_congestion()
            .map(|v| {
                String::from_utf8_lossy(&v)
                    .trim_end_matches('\0')
                    .to_string()
            })
            .unwrap_or_else(|_| "?".into()),
    };
    let header = [0u8; HEADER];
    let mut rng = 0x9E37_79B9_7F4A_7C15u64;
    let (mut seq, mut bytes, mut blocks) = (0usize, 0u64, 0u64);
    let time = Duration::from_secs_f64(a.time);
    let (t, cpu0) = (Instant::now(), thread_cpu());
    while t.elapsed() < time {
        let mut offs = Vec::with_capacity(batch);
        for _ in 0..batch {
            let off = if bs >= 128 << 10 {
                let o = seq;
                seq = (seq + bs) % REGION;
                o
            } else {
                (next(&mut rng) as usize % (REGION / bs)) * bs
            };
            offs.push(off);
        }
        let mut iov = Vec::with_capacity(2 * batch);
        for &o in &offs {
            iov.push(IoSlice::new(&header));
            iov.push(IoSlice::new(region.block(o, bs)));
        }
        let mut slices: &mut [IoSlice] = &mut iov;
        while !slices.is_empty() {
            match s.write_vectored(slices) {
                Ok(n) => {
                    bytes += n as u64;
                    IoSlice::advance_slices(&mut slices, n);
                }
                // The sender polls, as the target does while traffic flows.
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(_) => return None,
            }
        }
        blocks += batch as u64;
    }
    let (secs, cpu) = (t.elapsed().as_secs_f64(), thread_cpu() - cpu0);
    drop(s);
    let _ = reader.join();
    let kind = if bs >= 128 << 10 {
        "sequential"
    } else {
        "random"
    };
    Some(Rate {
        name: format!(
            "TCP stream, {} KiB {kind} blocks, {batch} per sendmsg, {used}",
            bs >> 10
        ),
        kind: "stream",
        block: bs,
        cc: used,
        bytes_per_s: bytes as f64 / secs,
        blocks_per_s: blocks as f64 / secs,
        sender_busy: cpu.as_secs_f64() / secs,
    })
}

fn main() {
    let a = Args::parse();
    let region = Region::new();
    let time = Duration::from_secs_f64(a.time);
    let mut rates = vec![memcpy(&region, a.send_cpu, time)];
    for cc in [None, Some("cubic")] {
        for (bs, batch) in [(128 << 10, 8), (4 << 10, 16)] {
            match stream(&region, &a, bs, batch, cc) {
                Some(r) => rates.push(r),
                None => eprintln!("stream with {cc:?} unavailable here"),
            }
        }
    }
    println!(
        "{:<62} {:>10} {:>12} {:>8}",
        "bare ceiling (no NVMe/TCP)", "MiB/s", "blocks/s", "sender"
    );
    for r in &rates {
        println!(
            "{:<62} {:>10.0} {:>12.0} {:>7.0}%",
            r.name,
            r.bytes_per_s / (1 << 20) as f64,
            r.blocks_per_s,
            r.sender_busy * 100.0
        );
    }
    if let Some(path) = &a.json {
        let items: Vec<String> = rates
            .iter()
            .map(|r| {
                format!(
                    "{{\"name\": \"{}\", \"kind\": \"{}\", \"block\": {}, \"cc\": \"{}\", \"mib_per_s\": {:.1}, \"blocks_per_s\": {:.1}, \"sender_busy\": {:.3}}}",
                    r.name,
                    r.kind,
                    r.block,
                    r.cc,
                    r.bytes_per_s / (1 << 20) as f64,
                    r.blocks_per_s,
                    r.sender_busy
                )
            })
            .collect();
        let text = format!("{{\"ceiling\": [\n  {}\n]}}\n", items.join(",\n  "));
        if let Err(e) = std::fs::write(path, text) {
            eprintln!("cannot write {}: {e}", path.display());
            std::process::exit(1);
        }
    }
}
