//! Faults: SIGKILL under FUA writes loses nothing acknowledged, and a soak of
//! many connections with random disconnects leaks no file descriptors,
//! controllers or memory.

mod common;
use common::*;
use nvmf_tpc::host::{Controller, HostConfig};
use std::cell::RefCell;
use std::rc::Rc;
use std::time::{Duration, Instant};

fn block(lba: u64, round: u64) -> Vec<u8> {
    let mut b = vec![0u8; 4096];
    for (i, c) in b.chunks_exact_mut(16).enumerate() {
        c[..8].copy_from_slice(&lba.to_le_bytes());
        c[8..16].copy_from_slice(&(round ^ i as u64).to_le_bytes());
    }
    b
}

#[test]
fn sigkill_loses_no_acknowledged_write() {
    let dir = scratch_dir("crash");
    let file = dir.join("crash.img");
    sparse_file(&file, 64 << 20);
    let path = file.to_str().unwrap().to_string();
    for round in 1..=3u64 {
        let t = Target::start(&["--subsystem", NQN, "--namespace", &path, "--cores", "2"]);
        let addr = t.addr;
        // Writers on 4 queues; the main thread kills the target mid-stream.
        let writer = std::thread::spawn(move || {
            run(move || async move {
                let c = Controller::connect(HostConfig::new(addr, NQN))
                    .await
                    .unwrap();
                c.set_number_of_queues(4).await.unwrap();
                let acked: Rc<RefCell<Vec<u64>>> = Rc::new(RefCell::new(Vec::new()));
                let mut tasks = Vec::new();
                for qid in 1..=4u16 {
                    let q = c.connect_io_queue(qid).await.unwrap();
                    let acked = acked.clone();
                    tasks.push(glommio::spawn_local(async move {
                        // Queue k writes LBAs k, k+4, k+8, ...: each LBA once per round.
                        let mut lba = qid as u64 - 1;
                        while lba < 16384 {
                            // Alternate FUA writes and plain writes followed by Flush.
                            let fua = lba % 8 < 4;
                            if q.write(1, lba, &block(lba, round), 4096, fua)
                                .await
                                .is_err()
                            {
                                return;
                            }
                            if !fua && q.flush(1).await.is_err() {
                                return;
                            }
                            acked.borrow_mut().push(lba);
                            lba += 4;
                        }
                    }));
                }
                for t in tasks {
                    t.await;
                }
                let v = acked.borrow().clone();
                v
            })
        });
        std::thread::sleep(Duration::from_millis(300 + 200 * round));
        t.kill9();
        let acked = writer.join().unwrap();
        assert!(
            !acked.is_empty(),
            "round {round}: nothing acknowledged before the kill"
        );
        // Restart on the same file and read every acknowledged block back.
        let t = Target::start(&["--subsystem", NQN, "--namespace", &path]);
        let addr = t.addr;
        let n = acked.len();
        run(move || async move {
            let c = Controller::connect(HostConfig::new(addr, NQN))
                .await
                .unwrap();
            let q = c.connect_io_queue(1).await.unwrap();
            for lba in acked {
                let got = q.read(1, lba, 1, 4096).await.unwrap();
                assert!(
                    got == block(lba, round),
                    "round {round}: LBA {lba} lost its acknowledged data"
                );
            }
        });
        eprintln!("round {round}: {n} acknowledged writes intact after SIGKILL");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

fn fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

fn rss_kib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap()
}

#[test]
fn soak_many_connections_with_random_disconnects() {
    let t = Target::start(&["--subsystem", NQN, "--namespace", "ram:64M", "--cores", "2"]);
    let pid = t.pid();
    let addr = t.addr;
    let warm = || {
        run(move || async move {
            let c = Controller::connect(HostConfig::new(addr, NQN))
                .await
                .unwrap();
            let q = c.connect_io_queue(1).await.unwrap();
            q.write(1, 0, &[1u8; 4096], 4096, false).await.unwrap();
        })
    };
    warm();
    std::thread::sleep(Duration::from_millis(300));
    let (fd0, rss0) = (fds(pid), rss_kib(pid));
    // 4 client threads x 12 controllers x up to 8 I/O queues, random I/O,
    // then each controller vanishes: some shut down, some just drop.
    let deadline = Instant::now() + Duration::from_secs(8);
    let mut clients = Vec::new();
    for thread in 0..4u64 {
        clients.push(std::thread::spawn(move || {
            run(move || async move {
                let mut seed = 0x9e37_79b9_7f4a_7c15u64 ^ thread;
                let mut rnd = move || {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    seed
                };
                let mut conns = 0;
                while Instant::now() < deadline {
                    let c = Controller::connect(
                        HostConfig::new(addr, NQN).with_hostid([thread as u8 + 1; 16]),
                    )
                    .await
                    .unwrap();
                    let nq = 1 + (rnd() % 8) as u16;
                    c.set_number_of_queues(nq).await.unwrap();
                    let mut qs = Vec::new();
                    for qid in 1..=nq {
                        qs.push(c.connect_io_queue(qid).await.unwrap());
                        conns += 1;
                    }
                    for _ in 0..rnd() % 64 {
                        let q = &qs[(rnd() % nq as u64) as usize];
                        let lba = rnd() % 16384;
                        if rnd() % 2 == 0 {
                            q.write(1, lba, &block(lba, thread), 4096, false)
                                .await
                                .unwrap();
                        } else {
                            q.read(1, lba, 1, 4096).await.unwrap();
                        }
                    }
                    // Drop a random I/O queue first, then the rest.
                    qs.swap_remove((rnd() % nq as u64) as usize)
                        .queue
                        .close()
                        .await;
                    if rnd() % 2 == 0 {
                        c.shutdown().await.unwrap();
                    }
                }
                conns
            })
        }));
    }
    let total: usize = clients.into_iter().map(|c| c.join().unwrap()).sum();
    assert!(
        total >= 100,
        "only {total} I/O queue connections in the soak"
    );
    // Everything is released: file descriptors back to where they were.
    let deadline = Instant::now() + Duration::from_secs(10);
    while fds(pid) > fd0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    let (fd1, rss1) = (fds(pid), rss_kib(pid));
    // Every controller created was destroyed.
    let count = |what: &str| {
        t.log()
            .lines()
            .filter(|l| l.contains("controller ") && l.contains(what))
            .count()
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while count(" created for host") != count(" destroyed: ") && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        count(" created for host"),
        count(" destroyed: "),
        "controllers leaked"
    );
    assert!(
        fd1 <= fd0,
        "file descriptors leaked: {fd0} before, {fd1} after {total} connections"
    );
    assert!(
        rss1 < rss0 + 64 * 1024,
        "resident memory grew from {rss0} KiB to {rss1} KiB over {total} connections"
    );
    // The target still serves, and a new controller works.
    warm();
    eprintln!("soak: {total} I/O queue connections; fds {fd0} -> {fd1}; RSS {rss0} -> {rss1} KiB");
}

/// A connection dropped while a write is still running at the backing (a
/// loop device throttled to 4 KiB/s: a 32 KiB write takes 8 s) keeps its
/// qid until that write has finished: a host that reconnects cannot get a
/// queue, and so cannot write the same blocks, while the old write may
/// still land over them. (The drain used to give up after 5 s.)
#[test]
fn a_dropped_queue_keeps_its_qid_until_its_writes_have_landed() {
    use common::devices::{Loop, Throttle};
    let dir = scratch_dir("drain");
    let img = dir.join("slow.img");
    sparse_file(&img, 16 << 20);
    let lo = std::sync::Arc::new(Loop::attach(&img));
    let t = Target::start(&["--subsystem", NQN, "--namespace", &lo.0, "--cores", "1"]);
    let throttle = std::sync::Arc::new(Throttle::new("drain", &lo, 4096, t.pid()));
    let addr = t.addr;
    let lo2 = lo.clone();
    let th = throttle.clone();
    let (before, at_reuse) = run(move || async move {
        let c = Controller::connect(HostConfig::new(addr, NQN))
            .await
            .unwrap();
        let q = Rc::new(c.connect_io_queue(1).await.unwrap());
        let before = lo2.sectors_written();
        let submitted = th.writes_submitted();
        let w = q.clone();
        let write = glommio::spawn_local(async move {
            let _ = w.write(1, 0, &vec![0xA5; 32 << 10], 512, false).await;
        });
        // Wait until the target has handed the write to the device.
        let deadline = Instant::now() + Duration::from_secs(20);
        while th.writes_submitted() == submitted {
            assert!(
                Instant::now() < deadline,
                "the write never reached the device"
            );
            glommio::timer::sleep(Duration::from_millis(10)).await;
        }
        q.queue.close().await;
        drop(write);
        // Reconnect qid 1 until the target lets it go.
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if c.connect_io_queue(1).await.is_ok() {
                return (before, lo2.sectors_written());
            }
            assert!(Instant::now() < deadline, "qid 1 never came back");
            glommio::timer::sleep(Duration::from_millis(100)).await;
        }
    });
    assert!(
        at_reuse >= before + 64,
        "qid 1 was given out again while the dropped queue's write was still running ({} of 64 sectors written)",
        at_reuse - before
    );
    drop(throttle);
    drop(t);
}
