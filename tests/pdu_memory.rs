//! Raw PDUs against the real target's memory: partial PDUs and silent or
//! closing peers free everything, and a peer that stops reading holds
//! neither blocks nor DMA memory against other hosts, and cannot grow it.

mod common;
use common::raw::*;
use common::*;
use nvmf_tpc::wire::pdu::Digests;
use std::io::Write;
use std::time::Duration;

#[test]
fn partial_pdus_then_close_or_silence_free_everything() {
    let t = Target::start(&[
        "--subsystem",
        NQN,
        "--namespace",
        "ram:16M",
        "--cores",
        "1",
        "--pdu-timeout",
        "400ms",
        "--connect-timeout",
        "400ms",
    ]);
    let d = Digests::default();
    let (mut admin, cntlid) = enabled_admin(t.addr, d);
    let ic = icreq(d);
    let write = write_icd(2, 0, &[1u8; 4096], d);
    // Cut after the common header, inside the rest of a header, inside
    // data, then close.
    for (name, pre, cut) in [
        ("icreq header", vec![], ic[..8].to_vec()),
        ("icreq half", vec![], ic[..64].to_vec()),
        ("capsule header", ic.clone(), write[..8].to_vec()),
        ("capsule sqe", ic.clone(), write[..40].to_vec()),
        ("capsule data", ic.clone(), write[..1000].to_vec()),
    ] {
        let mut p = Peer::open(t.addr, d);
        p.send(&pre);
        p.send(&cut);
        p.s.shutdown(std::net::Shutdown::Write).unwrap();
        loop {
            match p.recv() {
                Some(Rx::IcResp) => {}
                None => break,
                other => panic!("{name}: {other:?}"),
            }
        }
        still_serving(&mut admin, 40, d);
    }
    // The same cuts on a connected I/O queue, then silence: the PDU timer
    // closes it.
    let mut p = io_peer(t.addr, d, cntlid, 1, 31);
    p.send(&write[..1000]);
    p.expect_closed();
    assert!(t.wait_log("partial PDU", Duration::from_secs(5)));
    // Silence before ICReq, and after ICReq without Connect.
    let mut p = Peer::open(t.addr, d);
    p.expect_closed();
    assert!(t.wait_log("no ICReq within", Duration::from_secs(5)));
    let mut p = Peer::open(t.addr, d);
    p.send(&ic);
    assert!(matches!(p.recv(), Some(Rx::IcResp)));
    p.expect_closed();
    assert!(t.wait_log("no Connect within", Duration::from_secs(5)));
    still_serving(&mut admin, 41, d);
    drop(admin);
    assert!(
        t.wait_log(
            "0 connections, 0 controllers, DMA memory in use 0 bytes",
            Duration::from_secs(10)
        ),
        "{}",
        t.log()
    );
}

/// A RAM read keeps its blocks held until its data is sent, so that each
/// block goes out whole; a host that stops reading its socket must not
/// keep them held (and another host's writes to them waiting) for as long
/// as it likes. A peer with a tiny receive buffer asks for block 0 many
/// times and reads nothing; another host's write of block 0 must complete,
/// and the stalled peer, once it reads, gets every block whole.
#[test]
fn a_host_that_stops_reading_does_not_hold_blocks_against_writers() {
    use nvmf_tpc::host::{Controller, HostConfig};
    let t = Target::start(&["--subsystem", NQN, "--namespace", "ram:16M", "--cores", "1"]);
    let d = Digests::default();
    let (_admin, cntlid) = enabled_admin(t.addr, d);
    let mut p = slow_reader(t.addr, cntlid, d);
    for cid in 10..40u16 {
        p.send(&read_cmd(cid, 0, 32, d));
    }
    // Another host writes block 0 while those reads sit unsent.
    let addr = t.addr;
    let wrote = std::thread::spawn(move || {
        run(move || async move {
            let c = Controller::connect(HostConfig::new(addr, NQN))
                .await
                .unwrap();
            let q = c.connect_io_queue(1).await.unwrap();
            q.write(1, 0, &[0xEE; 4096], 4096, false).await.is_ok()
        })
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !wrote.is_finished() {
        assert!(
            std::time::Instant::now() < deadline,
            "a write waited 20 s behind a host that does not read"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(wrote.join().unwrap());
    // Every block the stalled peer gets is one version whole.
    let mut got = 0;
    while got < 30 {
        match p.recv() {
            Some(Rx::Data(_, data, _)) => {
                for b in data.chunks(4096) {
                    assert!(b.iter().all(|&x| x == b[0]), "a torn block");
                }
            }
            Some(Rx::Resp(c)) => {
                assert!(c.status.is_success());
                got += 1;
            }
            other => panic!("{other:?}"),
        }
    }
}

/// A peer that takes its core's DMA memory and never sends the data it was
/// asked for (8 R2Ts of 128 KiB against 1 MiB) makes another host's writes
/// wait, never fail: they complete once the peer's controller expires
/// (KATO 3 s) and its buffers return (README, "slow others down").
#[test]
fn another_host_waits_for_dma_memory_a_stalled_peer_holds_and_never_fails() {
    use nvmf_tpc::host::{Controller, HostConfig};
    let t = Target::start(&[
        "--subsystem",
        NQN,
        "--namespace",
        "ram:16M",
        "--cores",
        "1",
        "--dma-memory",
        "1M",
        "--in-capsule-data",
        "4K",
    ]);
    let d = Digests::default();
    let mut a = Peer::open(t.addr, d);
    a.send(&icreq(d));
    let mut sqe = connect_sqe(1, 0, 31, 0);
    sqe.set_cdw(12, 3000); // KATO, ms (CDW12 of Connect)
    a.send(&capsule(&sqe, &connect_data(0xFFFF), d));
    a.send(&prop_set_cc(2, d));
    assert!(matches!(a.recv(), Some(Rx::IcResp)));
    let cntlid = a.expect_resp().dw0 as u16;
    assert!(a.expect_resp().status.is_success());
    let mut io = io_peer(t.addr, d, cntlid, 1, 31);
    for cid in 0..8u16 {
        io.send(&write_r2t(cid, cid as u64 * 32, 32, 128 << 10, d));
        assert_eq!(expect_r2t(&mut io).cccid, cid);
    }
    let addr = t.addr;
    let done = run(move || async move {
        let c = Controller::connect(HostConfig::new(addr, NQN))
            .await
            .unwrap();
        let q = c.connect_io_queue(1).await.unwrap();
        let data = pattern(64 << 10, 5);
        q.write(1, 1000, &data, 4096, false).await.unwrap();
        q.read(1, 1000, 16, 4096).await.unwrap() == data
    });
    assert!(done, "the other host's data differs");
    // It did wait: memory was spent, and came back with the expiry.
    let log = t.log();
    assert!(log.contains("DMA memory of this core spent"), "{log}");
    assert!(
        log.contains("keep alive timeout (3000 ms) expired"),
        "{log}"
    );
    drop((a, io));
}

/// A peer that stops reading cannot grow the target's memory (README,
/// "Who may do what"): with 32 reads of 1 MiB unread (its receive buffer is
/// 4 KiB), thousands more commands either stay in the socket (the target
/// stops reading while it cannot send) or end the connection (a completion
/// counts against SQSIZE until it is sent); the target's resident memory
/// does not grow with them, and the target keeps serving.
#[test]
fn a_peer_that_stops_reading_cannot_grow_memory() {
    let t = Target::start(&[
        "--subsystem",
        NQN,
        "--namespace",
        "ram:64M",
        "--cores",
        "1",
        "--max-io-size",
        "1M",
    ]);
    let rss = || {
        let s = std::fs::read_to_string(format!("/proc/{}/status", t.pid())).unwrap();
        let kib: u64 = s
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap();
        kib
    };
    // Resident memory once it has stopped moving (within 256 KiB over
    // 300 ms): the target has done what it will with what it was sent.
    let settled = || {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        let mut last = rss();
        let mut still = 0;
        while still < 3 && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
            let now = rss();
            still = if now.abs_diff(last) < 256 {
                still + 1
            } else {
                0
            };
            last = now;
        }
        last
    };
    let d = Digests::default();
    let (mut admin, cntlid) = enabled_admin(t.addr, d);
    let mut p = slow_reader(t.addr, cntlid, d);
    for cid in 10..42u16 {
        p.send(&read_cmd(cid, 0, 256, d));
    }
    let before = settled();
    // 20,000 more commands (1.4 MB), as many as the socket takes.
    p.s.set_nonblocking(true).unwrap();
    let mut more = Vec::new();
    for cid in 100..20_100u16 {
        more.extend(read_cmd(cid, 0, 1, d));
    }
    let mut sent = 0;
    while sent < more.len() {
        match p.s.write(&more[sent..]) {
            Ok(n) => sent += n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
            Err(_) => break, // closed: the target refused the excess
        }
    }
    let after = settled();
    assert!(
        after < before + 4096,
        "resident memory grew from {before} KiB to {after} KiB with {sent} bytes of unread commands"
    );
    eprintln!("{sent} bytes of excess commands taken; RSS {before} -> {after} KiB");
    drop(p);
    still_serving(&mut admin, 30, d);
}
