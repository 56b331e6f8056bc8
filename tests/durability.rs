//! Faults and stops: SIGKILL under FUA writes loses nothing acknowledged,
//! SIGTERM and SIGINT let a write held at the device finish and flush every
//! backing, and a soak of many connections with random disconnects leaks no
//! file descriptors, controllers or memory.

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

/// Acknowledged writes the kill should interrupt, per round: the kill comes
/// once this many are acknowledged, whatever the machine's speed.
const ACKED_BEFORE_KILL: usize = 200;

/// SIGKILL while FUA writes and write+Flush pairs stream in on 4 queues:
/// every acknowledged write reads back after a restart. The process crash
/// alone cannot tell a target that syncs from one that does not (the page
/// cache outlives the process), so the kernel also testifies: for every
/// acknowledged write, an fdatasync/fsync of the backing's inode
/// (`ext4_sync_file_enter`) began between the write's sending and its
/// acknowledgement. (Power loss itself is tests/power_cut.rs.)
#[test]
fn sigkill_loses_no_acknowledged_write() {
    use common::trace::{mono_now, Trace};
    use std::os::unix::fs::MetadataExt;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    const SYNC: &str = "ext4_sync_file_enter";
    let dir = scratch_dir("crash");
    let file = dir.join("crash.img");
    sparse_file(&file, 64 << 20);
    let ino = std::fs::metadata(&file).unwrap().ino();
    let path = file.to_str().unwrap().to_string();
    for round in 1..=3u64 {
        let trace = Trace::start(
            "crash",
            &[(&format!("ext4/{SYNC}"), &format!("ino == {ino}"))],
        );
        let t = Target::start(&["--subsystem", NQN, "--namespace", &path, "--cores", "2"]);
        let addr = t.addr;
        let count = Arc::new(AtomicUsize::new(0));
        let counted = count.clone();
        // Writers on 4 queues; the main thread kills the target mid-stream.
        let writer = std::thread::spawn(move || {
            run(move || async move {
                let c = Controller::connect(HostConfig::new(addr, NQN))
                    .await
                    .unwrap();
                c.set_number_of_queues(4).await.unwrap();
                // (LBA, sent, acknowledged) in CLOCK_MONOTONIC seconds.
                let acked: Rc<RefCell<Vec<(u64, f64, f64)>>> = Rc::new(RefCell::new(Vec::new()));
                let mut queues = Vec::new();
                for qid in 1..=4u16 {
                    queues.push((qid, c.connect_io_queue(qid).await.unwrap()));
                }
                let mut tasks = Vec::new();
                for (qid, q) in queues {
                    let (acked, counted) = (acked.clone(), counted.clone());
                    tasks.push(glommio::spawn_local(async move {
                        // Queue k writes LBAs k, k+4, k+8, ...: each LBA once per round.
                        let mut lba = qid as u64 - 1;
                        while lba < 16384 {
                            // Alternate FUA writes and plain writes followed by Flush.
                            let fua = lba % 8 < 4;
                            let sent = mono_now();
                            if q.write(1, lba, &block(lba, round), 4096, fua)
                                .await
                                .is_err()
                            {
                                return;
                            }
                            if !fua && q.flush(1).await.is_err() {
                                return;
                            }
                            acked.borrow_mut().push((lba, sent, mono_now()));
                            counted.fetch_add(1, Ordering::Relaxed);
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
        let deadline = Instant::now() + Duration::from_secs(60);
        while count.load(Ordering::Relaxed) < ACKED_BEFORE_KILL * round as usize {
            assert!(
                Instant::now() < deadline && !writer.is_finished(),
                "round {round}: only {} writes acknowledged",
                count.load(Ordering::Relaxed)
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        t.kill9();
        let acked = writer.join().unwrap();
        let syncs = trace.times(SYNC);
        for &(lba, sent, done) in &acked {
            let first_after = syncs.partition_point(|&s| s < sent);
            assert!(
                syncs.get(first_after).is_some_and(|&s| s <= done),
                "round {round}: LBA {lba} was acknowledged with no sync of the backing \
                 between {sent:.6} and {done:.6} ({} syncs in all)",
                syncs.len()
            );
        }
        drop(trace);
        // Restart on the same file and read every acknowledged block back.
        let t = Target::start(&["--subsystem", NQN, "--namespace", &path]);
        let addr = t.addr;
        let n = acked.len();
        run(move || async move {
            let c = Controller::connect(HostConfig::new(addr, NQN))
                .await
                .unwrap();
            let q = c.connect_io_queue(1).await.unwrap();
            for (lba, _, _) in acked {
                let got = q.read(1, lba, 1, 4096).await.unwrap();
                assert!(
                    got == block(lba, round),
                    "round {round}: LBA {lba} lost its acknowledged data"
                );
            }
        });
        eprintln!(
            "round {round}: {n} acknowledged writes intact after SIGKILL, {} syncs",
            syncs.len()
        );
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

/// Controllers each soak client creates and tears down.
const CONTROLLERS_PER_CLIENT: usize = 12;

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
    // Every controller created so far has been destroyed (teardown crosses
    // cores, so it is waited for, not slept on).
    let count = |what: &str| {
        t.log()
            .lines()
            .filter(|l| l.contains("controller ") && l.contains(what))
            .count()
    };
    let settled = |at_least: usize| {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let (c, d) = (count(" created for host"), count(" destroyed: "));
            if c == d && c >= at_least {
                return c;
            }
            assert!(
                Instant::now() < deadline,
                "{c} controllers created, {d} destroyed"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    };
    warm();
    settled(1);
    let (fd0, rss0) = (fds(pid), rss_kib(pid));
    // 4 client threads x 12 controllers x up to 8 I/O queues, random I/O,
    // then each controller vanishes: some shut down, some just drop.
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
                for _ in 0..CONTROLLERS_PER_CLIENT {
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
    // Everything is released: every controller destroyed, file descriptors
    // back to where they were.
    settled(1 + 4 * CONTROLLERS_PER_CLIENT);
    let deadline = Instant::now() + Duration::from_secs(10);
    while fds(pid) > fd0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    let (fd1, rss1) = (fds(pid), rss_kib(pid));
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
        th.write_reached_device(submitted).await;
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

/// SIGTERM or SIGINT while a write is held at the device (a loop device
/// throttled to 16 KiB/s for the target: 32 KiB take about 2 s): the write
/// still completes with success, every backing (that device and a file) is
/// synced after the signal, and the target exits 0 (README, "SIGINT/SIGTERM").
/// The syncs are seen by the kernel (`ext4_sync_file_enter` on each image's
/// inode; a loop device's flush reaches its backing file as one).
#[test]
fn a_stop_signal_lets_a_held_write_finish_and_flushes_every_backing() {
    use common::devices::{Loop, Throttle};
    use common::trace::{mono_now, Trace};
    use std::os::unix::fs::MetadataExt;
    use std::sync::Arc;
    for (sig, name) in [(libc::SIGTERM, "term"), (libc::SIGINT, "int")] {
        let dir = scratch_dir(&format!("stop-{name}"));
        let (slow, file) = (dir.join("slow.img"), dir.join("file.img"));
        sparse_file(&slow, 16 << 20);
        sparse_file(&file, 16 << 20);
        let ino = |p: &std::path::Path| std::fs::metadata(p).unwrap().ino();
        let filter = format!("ino == {} || ino == {}", ino(&slow), ino(&file));
        let trace = Trace::start(
            &format!("stop-{name}"),
            &[("ext4/ext4_sync_file_enter", &filter)],
        );
        let lo = Arc::new(Loop::attach(&slow));
        let t = Target::start(&[
            "--subsystem",
            NQN,
            "--namespace",
            &lo.0,
            "--namespace",
            file.to_str().unwrap(),
            "--cores",
            "1",
        ]);
        let th = Arc::new(Throttle::new(
            &format!("stop-{name}"),
            &lo,
            16 << 10,
            t.pid(),
        ));
        let (addr, pid) = (t.addr, t.pid() as i32);
        let (th2, lo2) = (th.clone(), lo.clone());
        let (before, signalled, written) = run(move || async move {
            let c = Controller::connect(HostConfig::new(addr, NQN))
                .await
                .unwrap();
            let q = c.connect_io_queue(1).await.unwrap();
            // Dirty the file namespace too (a plain write, no FUA).
            q.write(2, 0, &pattern(4096, 9), 4096, false).await.unwrap();
            let (before, submitted) = (lo2.sectors_written(), th2.writes_submitted());
            let held = pattern(32 << 10, 10);
            let write = q.write(1, 0, &held, 512, false);
            let signal = async {
                th2.write_reached_device(submitted).await;
                let at = mono_now();
                // SAFETY: a signal to the target's process.
                assert_eq!(unsafe { libc::kill(pid, sig) }, 0);
                at
            };
            let (written, signalled) = futures_lite::future::zip(write, signal).await;
            (before, signalled, written.map(|_| lo2.sectors_written()))
        });
        let written = written.unwrap_or_else(|e| {
            panic!(
                "{name}: the write held at the device failed: {e:?}\n{}",
                t.log()
            )
        });
        assert!(
            written >= before + 64,
            "{name}: acknowledged before it was written"
        );
        let st = t.stop();
        assert_eq!(st.code(), Some(0), "{name}: exit status");
        let synced: std::collections::BTreeSet<String> = trace
            .lines()
            .iter()
            .filter(|l| trace_time(l).is_some_and(|at| at > signalled))
            .filter_map(|l| {
                l.split(" ino ")
                    .nth(1)?
                    .split_whitespace()
                    .next()
                    .map(String::from)
            })
            .collect();
        assert_eq!(
            synced,
            [ino(&slow), ino(&file)]
                .iter()
                .map(u64::to_string)
                .collect(),
            "{name}: backings synced after the signal"
        );
        drop(th);
        drop(lo);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

/// The timestamp of a trace line (CLOCK_MONOTONIC seconds).
fn trace_time(line: &str) -> Option<f64> {
    let colon = line.find(": ")?;
    line[..colon].split_whitespace().last()?.parse().ok()
}
