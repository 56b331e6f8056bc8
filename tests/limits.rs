//! Limits and faults against the real target over loopback: DMA memory
//! back-pressure (commands wait, none fail, memory returns to zero), injected
//! media errors becoming NVMe statuses and error log entries, and the limits
//! a user sets (connections, controllers, I/O queues, MAXH2CDATA).

mod common;
use common::*;
use nvmf_tpc::host::{Controller, HostConfig, IoQueue};
use nvmf_tpc::wire::log_page::lid;
use nvmf_tpc::wire::status::Status;
use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::time::Duration;

const BS: u32 = 4096;

/// Every queue keeps `depth` commands of `len` bytes in flight at once.
async fn flood(queues: &[Rc<IoQueue>], depth: usize, len: usize, write: bool) {
    let mut tasks = Vec::new();
    for (qi, q) in queues.iter().enumerate() {
        for i in 0..depth {
            let q = q.clone();
            // Each command has its own blocks: qi and i pick them.
            let slba = ((qi * depth + i) * len / BS as usize) as u64;
            let seed = slba + 1;
            tasks.push(glommio::spawn_local(async move {
                if write {
                    q.write(1, slba, &pattern(len, seed), BS, false)
                        .await
                        .unwrap_or_else(|e| panic!("write at {slba}: {e}"));
                } else {
                    let back = q
                        .read(1, slba, (len / BS as usize) as u32, BS)
                        .await
                        .unwrap_or_else(|e| panic!("read at {slba}: {e}"));
                    assert!(back == pattern(len, seed), "data at {slba} differs");
                }
            }));
        }
    }
    for t in tasks {
        t.await;
    }
}

#[test]
fn spent_dma_memory_makes_commands_wait_never_fail() {
    // 1 MiB of DMA memory on one core against 4 queues × 32 commands × 128 KiB
    // (16 MiB): R2T writes, in-capsule writes and reads all have to wait.
    let t = Target::start(&[
        "--cores",
        "1",
        "--dma-memory",
        "1M",
        "--subsystem",
        NQN,
        "--namespace",
        "ram:64M",
    ]);
    let addr = t.addr;
    run(move || async move {
        let c = Controller::connect(HostConfig::new(addr, NQN))
            .await
            .unwrap();
        c.set_number_of_queues(4).await.unwrap();
        let mut qs = Vec::new();
        for qid in 1..=4 {
            qs.push(Rc::new(c.connect_io_queue(qid).await.unwrap()));
        }
        flood(&qs, 32, 128 * 1024, true).await;
        flood(&qs, 32, 128 * 1024, false).await;
        // Small in-capsule writes (8 KiB fit in the capsule) and reads mixed.
        flood(&qs, 32, 8192, true).await;
        flood(&qs, 32, 8192, false).await;
        for q in &qs {
            q.queue.close().await;
        }
        c.shutdown().await.unwrap();
    });
    assert!(
        t.wait_log("DMA memory of this core spent", Duration::from_secs(5)),
        "memory never ran out; the test did not test back-pressure:\n{}",
        t.log()
    );
    assert!(
        t.wait_log(
            "0 connections, 0 controllers, DMA memory in use 0 bytes",
            Duration::from_secs(10)
        ),
        "memory or controllers left behind:\n{}",
        t.log()
    );
    assert_eq!(t.stop().code(), Some(0));
}

#[test]
fn bad_blocks_fail_as_media_errors_and_the_target_keeps_serving() {
    let t = Target::start(&[
        "--subsystem",
        NQN,
        "--namespace",
        "ram:16M,badblocks=8-15,badblocks=100-100",
    ]);
    let addr = t.addr;
    run(move || async move {
        let c = Controller::connect(HostConfig::new(addr, NQN))
            .await
            .unwrap();
        let q = c.connect_io_queue(1).await.unwrap();
        let data = pattern(8 * BS as usize, 7);
        q.write(1, 0, &data, BS, false).await.unwrap();
        // A write touching block 8 (the first bad one) fails whole.
        // Not to be retried: part of it may have landed.
        let s = status_of(q.write(1, 4, &data, BS, false).await);
        assert_eq!(s, Status::WRITE_FAULT.with_dnr());
        assert_eq!(
            status_of(q.read(1, 100, 1, BS).await),
            Status::UNRECOVERED_READ_ERROR
        );
        assert_eq!(
            status_of(q.read(1, 15, 2, BS).await),
            Status::UNRECOVERED_READ_ERROR
        );
        // Around them everything works, and the failed write changed nothing.
        assert_eq!(q.read(1, 0, 8, BS).await.unwrap(), data);
        for (slba, n) in [(16, 32), (48, 32), (80, 20)] {
            q.read(1, slba, n, BS).await.unwrap();
        }
        q.read(1, 101, 1, BS).await.unwrap();
        // The last failure is first in the error log: LBA 15, namespace 1.
        // The I/O queue may live on another core than the controller, whose
        // error log hears of it by message: give it a moment.
        let mut el = Vec::new();
        for _ in 0..100 {
            el = c.get_log_page(lid::ERROR, 0, 0, 64).await.unwrap();
            if u64::from_le_bytes(el[0..8].try_into().unwrap()) >= 3 {
                break;
            }
            glommio::timer::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(u64::from_le_bytes(el[0..8].try_into().unwrap()), 3);
        let status = u16::from_le_bytes(el[12..14].try_into().unwrap()) >> 1;
        assert_eq!(status, Status::UNRECOVERED_READ_ERROR.0);
        assert_eq!(u64::from_le_bytes(el[16..24].try_into().unwrap()), 15);
        assert_eq!(u32::from_le_bytes(el[24..28].try_into().unwrap()), 1);
    });
    assert_eq!(t.stop().code(), Some(0));
}

#[test]
fn bad_block_ranges_are_checked_at_start() {
    for spec in [
        "ram:1M,badblocks=256-256",
        "ram:1M,badblocks=5-4",
        "ram:1M,badblocks=x",
    ] {
        let r = Target::try_start(&["--subsystem", NQN, "--namespace", spec]);
        let Err((st, out)) = r else {
            panic!("{spec}: started");
        };
        assert_ne!(st.and_then(|s| s.code()), Some(0), "{spec}");
        assert!(out.contains("badblocks"), "{spec}: {out}");
    }
}

#[test]
fn connection_controller_and_queue_limits_hold() {
    let t = Target::start(&[
        "--cores",
        "1",
        "--max-connections",
        "8",
        "--max-controllers",
        "1",
        "--max-io-queues",
        "1",
        "--max-h2c-data",
        "16K",
        "--subsystem",
        NQN,
        "--namespace",
        "ram:16M",
    ]);
    let addr = t.addr;
    run(move || async move {
        let c = Controller::connect(HostConfig::new(addr, NQN))
            .await
            .unwrap();
        // Number of Queues grants one I/O queue; qid 2 is refused.
        assert_eq!(c.set_number_of_queues(8).await.unwrap(), 1);
        let q = c.connect_io_queue(1).await.unwrap();
        assert_eq!(q.queue.maxh2cdata(), 16 * 1024);
        assert!(c.connect_io_queue(2).await.is_err());
        // A second controller is refused while the first lives.
        let other = HostConfig::new(addr, NQN).with_hostid(*b"another-host-id!");
        assert_eq!(
            status_of(Controller::connect(other.clone()).await),
            Status::CONNECT_CONTROLLER_BUSY
        );
        // Writes above MAXH2CDATA arrive in several H2CData PDUs.
        let data = pattern(64 * 1024, 3);
        q.write(1, 0, &data, BS, false).await.unwrap();
        assert_eq!(q.read(1, 0, 16, BS).await.unwrap(), data);
        q.queue.close().await;
        c.shutdown().await.unwrap();
        drop(c);
    });
    // Eight connections at most: a ninth is closed at once.
    assert!(t.wait_log("0 connections, 0 controllers", Duration::from_secs(10)));
    let held: Vec<TcpStream> = (0..8).map(|_| TcpStream::connect(addr).unwrap()).collect();
    let mut ninth = TcpStream::connect(addr).unwrap();
    ninth
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut b = [0u8; 1];
    use std::io::Read;
    // Closed: end of stream or a reset, not a read that timed out.
    match ninth.read(&mut b) {
        Ok(0) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        other => panic!("the ninth connection was not closed: {other:?}"),
    }
    assert!(t.wait_log("connection limit (8) reached", Duration::from_secs(5)));
    drop(held);
    assert_eq!(t.stop().code(), Some(0));
}

#[test]
fn limit_flags_are_checked() {
    for args in [
        ["--max-io-queues", "0"],
        ["--max-connections", "0"],
        ["--max-controllers", "0"],
        ["--max-h2c-data", "1K"],
        ["--max-h2c-data", "1M"],
        ["--pdu-timeout", "1us"],
        ["--connect-timeout", "2h"],
        ["--tcp-congestion", "no-such-algorithm"],
    ] {
        let r = Target::try_start(&args);
        let Err((st, out)) = r else {
            panic!("{args:?}: started");
        };
        assert_eq!(st.and_then(|s| s.code()), Some(2), "{args:?}: {out}");
        assert!(out.contains(args[0]), "{args:?}: {out}");
    }
}

/// The target's side of the connection from `local` (a client socket), as
/// /proc/net/tcp shows it: (state, timer kind).
fn target_socket(target: std::net::SocketAddr, client: std::net::SocketAddr) -> Option<(u8, u8)> {
    let tcp = std::fs::read_to_string("/proc/net/tcp").unwrap();
    let want_local = format!(":{:04X}", target.port());
    let want_rem = format!(":{:04X}", client.port());
    tcp.lines().skip(1).find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        (f[1].ends_with(&want_local) && f[2].ends_with(&want_rem)).then(|| {
            let st = u8::from_str_radix(f[3], 16).unwrap();
            let timer = f[5].split(':').next().unwrap().parse().unwrap();
            (st, timer)
        })
    })
}

#[test]
fn accepted_sockets_probe_silent_peers() {
    // A host that vanishes without a FIN and disabled NVMe keep alive is
    // found by TCP keepalive: /proc/net/tcp shows the keepalive timer (2)
    // armed on the target's established (01) socket.
    let t = Target::start(&["--subsystem", NQN, "--namespace", "ram:1M"]);
    let c = TcpStream::connect(t.addr).unwrap();
    let me = c.local_addr().unwrap();
    let mut seen = None;
    for _ in 0..100 {
        seen = target_socket(t.addr, me);
        if seen == Some((1, 2)) {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(seen, Some((1, 2)), "target socket (state, timer)");
}

/// The target's socket for the connection from `client`, taken from its
/// process (pidfd_getfd, Linux 5.6) so that its options can be read.
fn target_socket_fd(t: &Target, client: std::net::SocketAddr) -> Option<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    let tcp = std::fs::read_to_string("/proc/net/tcp").unwrap();
    let (lport, rport) = (
        format!(":{:04X}", t.addr.port()),
        format!(":{:04X}", client.port()),
    );
    let inode = tcp.lines().skip(1).find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        (f[1].ends_with(&lport) && f[2].ends_with(&rport)).then(|| f[9].to_string())
    })?;
    let want = format!("socket:[{inode}]");
    let fd: i32 = std::fs::read_dir(format!("/proc/{}/fd", t.pid()))
        .unwrap()
        .flatten()
        .find(|e| std::fs::read_link(e.path()).is_ok_and(|l| l.to_string_lossy() == want))?
        .file_name()
        .to_str()?
        .parse()
        .ok()?;
    // SAFETY: plain system calls; the results are checked and owned.
    unsafe {
        let pidfd = libc::syscall(libc::SYS_pidfd_open, t.pid() as i32, 0) as i32;
        assert!(
            pidfd >= 0,
            "pidfd_open: {}",
            std::io::Error::last_os_error()
        );
        let pidfd = std::os::fd::OwnedFd::from_raw_fd(pidfd);
        let got = libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), fd, 0) as i32;
        assert!(got >= 0, "pidfd_getfd: {}", std::io::Error::last_os_error());
        Some(std::os::fd::OwnedFd::from_raw_fd(got))
    }
}

/// (SO_RCVBUF, SO_SNDBUF) of the target's side of a new connection, once
/// the target has had time to set them up.
fn accepted_buffers(t: &Target, settled: impl Fn((usize, usize)) -> bool) -> (usize, usize) {
    let c = TcpStream::connect(t.addr).unwrap();
    let me = c.local_addr().unwrap();
    let mut seen = (0, 0);
    for _ in 0..100 {
        if let Some(fd) = target_socket_fd(t, me) {
            let s = socket2::SockRef::from(&fd);
            seen = (s.recv_buffer_size().unwrap(), s.send_buffer_size().unwrap());
            if settled(seen) {
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    seen
}

/// Field `i` of a sysctl (tcp_rmem: min, default, max).
fn sysctl(name: &str, i: usize) -> usize {
    let path = format!("/proc/sys/{}", name.replace('.', "/"));
    let v = std::fs::read_to_string(&path).unwrap();
    v.split_whitespace().nth(i).unwrap().parse().unwrap()
}

fn with_socket_buffer(v: &str) -> Target {
    Target::start(&[
        "--subsystem",
        NQN,
        "--namespace",
        "ram:1M",
        "--socket-buffer",
        v,
    ])
}

#[test]
fn accepted_sockets_get_the_buffers_asked_for() {
    // The kernel reports twice the size set (socket(7)).
    let t = with_socket_buffer("1M");
    assert_eq!(
        accepted_buffers(&t, |b| b == (2 << 20, 2 << 20)),
        (2 << 20, 2 << 20)
    );
    drop(t);
    // 0: the kernel's own sizes, which start from net.ipv4.tcp_rmem/tcp_wmem.
    let t = with_socket_buffer("0");
    let (rx, _) = accepted_buffers(&t, |b| b.0 > 0);
    assert_eq!(rx, sysctl("net.ipv4.tcp_rmem", 1));
    drop(t);
    // The default: 2 MiB where the kernel grants it (SPDK's size).
    let t = Target::start(&["--subsystem", NQN, "--namespace", "ram:1M"]);
    let (rmax, wmax) = (
        sysctl("net.core.rmem_max", 0),
        sysctl("net.core.wmem_max", 0),
    );
    let want = if rmax.min(wmax) >= 2 << 20 {
        (4 << 20, 4 << 20)
    } else {
        (sysctl("net.ipv4.tcp_rmem", 1), 0)
    };
    let got = accepted_buffers(&t, |b| b.0 == want.0);
    assert_eq!(
        got.0, want.0,
        "default receive buffer (rmem_max {rmax}, wmem_max {wmax})"
    );
    if want.1 > 0 {
        assert_eq!(got.1, want.1);
    }
    // Beyond what the kernel grants, or beyond the limit: refused at start.
    let over = (rmax.max(wmax) + 4096).to_string();
    for v in [over.as_str(), "65M"] {
        let Err((st, out)) = Target::try_start(&["--socket-buffer", v]) else {
            panic!("--socket-buffer {v}: started");
        };
        assert_eq!(st.and_then(|s| s.code()), Some(2), "{v}: {out}");
        assert!(out.contains("--socket-buffer"), "{v}: {out}");
    }
}

/// One host NQN cannot take every controller: past
/// `--max-controllers-per-host` (counted over every core, discovery
/// included) its Connects get Controller Busy, while another host still
/// connects; a released controller makes room again.
#[test]
fn one_host_cannot_lock_the_others_out() {
    let t = Target::start(&[
        "--subsystem",
        NQN,
        "--namespace",
        "null:1M",
        "--cores",
        "2",
        "--max-controllers-per-host",
        "3",
    ]);
    let addr = t.addr;
    run(move || async move {
        let a = HostConfig::new(addr, NQN);
        let b = HostConfig::new(addr, NQN).with_hostid(*b"another-host\0\0\0\x02");
        let mut held = vec![Controller::connect(a.clone()).await.unwrap()];
        held.push(Controller::connect(a.clone()).await.unwrap());
        held.push(Controller::connect_discovery(addr).await.unwrap());
        for _ in 0..4 {
            assert_eq!(
                status_of(Controller::connect(a.clone()).await.map(|_| ())),
                Status::CONNECT_CONTROLLER_BUSY
            );
        }
        let other = Controller::connect(b).await.unwrap();
        other.keep_alive().await.unwrap();
        // Released: its admin queue closes, the target frees its place.
        held.pop().unwrap().shutdown().await.unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            match Controller::connect(a.clone()).await {
                Ok(c) => break held.push(c),
                Err(e) => assert_eq!(e.status(), Some(Status::CONNECT_CONTROLLER_BUSY)),
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the place was never freed"
            );
            glommio::timer::sleep(Duration::from_millis(20)).await;
        }
    });
}
