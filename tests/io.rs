//! NVM I/O against the real target over loopback, data checked: every
//! transfer path (in-capsule, R2T with several H2CData, split C2HData,
//! SUCCESS flag), digests, every I/O command, the error statuses, and
//! commands completing out of order.

mod common;
use common::*;
use nvmf_tpc::host::{Controller, HostConfig, IoQueue};
use nvmf_tpc::wire::command::{io, sgl, SglDescriptor, Sqe};
use nvmf_tpc::wire::log_page::lid;
use nvmf_tpc::wire::pdu::Digests;
use nvmf_tpc::wire::status::Status;
use std::cell::RefCell;
use std::net::SocketAddr;
use std::rc::Rc;

async fn open(addr: SocketAddr, digests: Digests, sqflow_off: bool) -> (Controller, IoQueue) {
    let mut cfg = HostConfig::new(addr, NQN);
    cfg.digests = digests;
    cfg.disable_sqflow = sqflow_off;
    let c = Controller::connect(cfg).await.expect("connect");
    c.set_number_of_queues(4).await.expect("queues");
    let q = c.connect_io_queue(1).await.expect("io queue");
    (c, q)
}

/// Write then read back `blocks` at `slba`, checking the neighbours too.
async fn round_trip(q: &IoQueue, nsid: u32, bs: u32, slba: u64, blocks: u32, seed: u64) {
    let data = pattern((blocks * bs) as usize, seed);
    q.write(nsid, slba, &data, bs, false).await.expect("write");
    let back = q.read(nsid, slba, blocks, bs).await.expect("read");
    assert!(
        back == data,
        "ns {nsid} slba {slba} blocks {blocks}: data differs"
    );
}

fn all_paths(digests: Digests, sqflow_off: bool) {
    // 1M MDTS: writes above 128K need several H2CData per R2T, reads above
    // 128K come as several C2HData.
    let t = Target::start(&[
        "--subsystem",
        NQN,
        "--namespace",
        "ram:64M",
        "--namespace",
        "ram:16M,bs=512",
        "--max-io-size",
        "1M",
        "--in-capsule-data",
        "8K",
    ]);
    let addr = t.addr;
    run(move || async move {
        let (c, q) = open(addr, digests, sqflow_off).await;
        assert_eq!(c.namespace_geometry(1).await.unwrap(), (16384, 4096));
        assert_eq!(c.namespace_geometry(2).await.unwrap(), (32768, 512));
        let mut seed = 1;
        for (nsid, bs, nsze) in [(1u32, 4096u32, 16384u64), (2, 512, 32768)] {
            // 1 block, in-capsule sizes, just above in-capsule, MDTS, odd sizes.
            for bytes in [
                bs,
                2 * bs,
                8192,
                8192 + bs,
                12288,
                131072,
                131072 + bs,
                524288,
                1 << 20,
            ] {
                let blocks = bytes / bs;
                for slba in [0u64, 1, 37, nsze - blocks as u64] {
                    seed += 1;
                    round_trip(&q, nsid, bs, slba, blocks, seed).await;
                }
            }
        }
        // Overwrite keeps neighbours.
        let a = pattern(3 * 4096, 100);
        q.write(1, 100, &a, 4096, false).await.unwrap();
        let b = pattern(4096, 101);
        q.write(1, 101, &b, 4096, true).await.unwrap();
        let back = q.read(1, 100, 3, 4096).await.unwrap();
        assert_eq!(&back[..4096], &a[..4096]);
        assert_eq!(&back[4096..8192], &b[..]);
        assert_eq!(&back[8192..], &a[8192..]);
        c.shutdown().await.unwrap();
    });
}

#[test]
fn data_paths_plain() {
    all_paths(Digests::default(), false);
}

#[test]
fn data_paths_with_digests() {
    all_paths(
        Digests {
            header: true,
            data: true,
        },
        false,
    );
}

#[test]
fn data_paths_without_sq_flow_control() {
    // Reads complete with the C2HData SUCCESS flag and no CapsuleResp.
    all_paths(
        Digests {
            header: true,
            data: false,
        },
        true,
    );
}

#[test]
fn host_pdu_data_alignment_is_honoured() {
    // HPDA 7: the host wants C2HData payloads at 32-byte offsets.
    let t = Target::start(&["--subsystem", NQN, "--namespace", "ram:16M"]);
    let addr = t.addr;
    run(move || async move {
        let mut cfg = HostConfig::new(addr, NQN);
        cfg.hpda = 7;
        cfg.digests = Digests {
            header: true,
            data: true,
        };
        let c = Controller::connect(cfg).await.unwrap();
        let q = c.connect_io_queue(1).await.unwrap();
        for blocks in [1u32, 3, 32] {
            round_trip(&q, 1, 4096, 5, blocks, blocks as u64).await;
        }
        // Admin data (Identify) comes through C2HData too.
        assert_eq!(c.identify(1, 0).await.unwrap().len(), 4096);
    });
}

#[test]
fn commands_flush_zeroes_deallocate_compare() {
    let dir = scratch_dir("cmds");
    let file = dir.join("ns.img");
    sparse_file(&file, 16 << 20);
    let t = Target::start(&[
        "--subsystem",
        NQN,
        "--namespace",
        "ram:16M",
        "--namespace",
        file.to_str().unwrap(),
        "--namespace",
        "null:16M",
    ]);
    let addr = t.addr;
    run(move || async move {
        let (_c, q) = open(addr, Digests::default(), false).await;
        for nsid in [1u32, 2] {
            let data = pattern(64 * 1024, nsid as u64);
            q.write(nsid, 16, &data, 4096, false).await.unwrap();
            q.flush(nsid).await.unwrap();
            // Compare: equal, then one byte off.
            q.compare(nsid, 16, &data[..8192], 4096).await.unwrap();
            let mut off = data[..8192].to_vec();
            off[5000] ^= 1;
            assert_eq!(
                status_of(q.compare(nsid, 16, &off, 4096).await),
                Status::COMPARE_FAILURE
            );
            // Write Zeroes on blocks 17..19, deallocate 24..27.
            q.write_zeroes(nsid, 17, 2).await.unwrap();
            q.deallocate(nsid, &[(24, 4), (40, 0)]).await.unwrap();
            let back = q.read(nsid, 16, 16, 4096).await.unwrap();
            assert_eq!(&back[..4096], &data[..4096]);
            assert!(back[4096..3 * 4096].iter().all(|&b| b == 0), "write zeroes");
            assert_eq!(&back[3 * 4096..8 * 4096], &data[3 * 4096..8 * 4096]);
            assert!(
                back[8 * 4096..12 * 4096].iter().all(|&b| b == 0),
                "deallocate"
            );
            assert_eq!(&back[12 * 4096..], &data[12 * 4096..]);
        }
        // Null: writes vanish, reads are zeroes.
        q.write(3, 0, &pattern(8192, 9), 4096, false).await.unwrap();
        assert!(q.read(3, 0, 2, 4096).await.unwrap().iter().all(|&b| b == 0));
        q.flush(3).await.unwrap();
    });
    // The file holds the data after the target is gone.
    assert_eq!(t.stop().code(), Some(0));
    let on_disk = std::fs::read(&file).unwrap();
    assert_eq!(
        &on_disk[16 * 4096..17 * 4096],
        &pattern(64 * 1024, 2)[..4096]
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn error_statuses() {
    let t = Target::start(&["--subsystem", NQN, "--namespace", "ram:1M"]);
    let addr = t.addr;
    run(move || async move {
        let (_c, q) = open(addr, Digests::default(), false).await;
        assert_eq!(
            status_of(q.read(2, 0, 1, 4096).await),
            Status::INVALID_NAMESPACE
        );
        assert_eq!(
            status_of(q.read(0xFFFF_FFFF, 0, 1, 4096).await),
            Status::INVALID_NAMESPACE
        );
        assert_eq!(
            status_of(q.read(1, 256, 1, 4096).await),
            Status::LBA_OUT_OF_RANGE
        );
        assert_eq!(
            status_of(q.read(1, 255, 2, 4096).await),
            Status::LBA_OUT_OF_RANGE
        );
        assert_eq!(
            status_of(q.read(1, u64::MAX, 1, 4096).await),
            Status::LBA_OUT_OF_RANGE
        );
        assert_eq!(
            status_of(q.write_zeroes(1, 250, 10).await),
            Status::LBA_OUT_OF_RANGE
        );
        assert_eq!(
            status_of(q.deallocate(1, &[(0, 1), (255, 2)]).await),
            Status::LBA_OUT_OF_RANGE
        );
        // Larger than MDTS (128K): 64 blocks of 4K, sent raw so the host
        // library does not split it.
        let mut sqe = Sqe::default();
        sqe.set_opcode(io::READ)
            .set_nsid(1)
            .set_cdw(12, 63)
            .set_sgl(SglDescriptor {
                addr: 0,
                length: 64 * 4096,
                id: sgl::TRANSPORT_DATA_BLOCK,
            });
        assert_eq!(
            status_of(q.queue.submit(sqe, None, 64 * 4096).await),
            Status::INVALID_FIELD
        );
        // An opcode the NVM command set does not have.
        let mut sqe = Sqe::default();
        sqe.set_opcode(0x7E).set_nsid(1);
        assert_eq!(
            status_of(q.queue.submit(sqe, None, 0).await),
            Status::INVALID_OPCODE
        );
        // A read whose SGL is shorter than the data.
        let mut sqe = Sqe::default();
        sqe.set_opcode(io::READ)
            .set_nsid(1)
            .set_cdw(12, 1)
            .set_sgl(SglDescriptor {
                addr: 0,
                length: 4096,
                id: sgl::TRANSPORT_DATA_BLOCK,
            });
        assert_eq!(
            status_of(q.queue.submit(sqe, None, 4096).await),
            Status::DATA_SGL_LENGTH_INVALID
        );
        // The queue still works.
        round_trip(&q, 1, 4096, 3, 1, 5).await;
    });
}

#[test]
fn many_in_flight_complete_out_of_order() {
    // A write held at the device (a loop device throttled by the kernel to
    // 16 KiB/s for the target's process: 64 KiB take about 4 s) must not hold
    // back the RAM reads issued after it on the same queue. The write's own
    // completion is recorded, so a target that completes in order fails.
    use common::devices::{Loop, Throttle};
    let dir = scratch_dir("ooo");
    let img = dir.join("slow.img");
    sparse_file(&img, 16 << 20);
    let lo = std::sync::Arc::new(Loop::attach(&img));
    let t = Target::start(&[
        "--subsystem",
        NQN,
        "--namespace",
        &lo.0,
        "--namespace",
        "ram:16M",
        "--cores",
        "1",
    ]);
    let throttle = std::sync::Arc::new(Throttle::new("ooo", &lo, 16 << 10, t.pid()));
    let addr = t.addr;
    let th = throttle.clone();
    let order = run(move || async move {
        let (_c, q) = open(addr, Digests::default(), false).await;
        let order = Rc::new(RefCell::new(Vec::new()));
        let submitted = th.writes_submitted();
        let write = {
            let (q, order) = (q.clone(), order.clone());
            glommio::spawn_local(async move {
                q.write(1, 0, &pattern(64 << 10, 1), 512, false)
                    .await
                    .unwrap();
                order.borrow_mut().push("write");
            })
        };
        // Wait until the target has handed the write to the device.
        th.write_reached_device(submitted).await;
        let reads: Vec<_> = (0..31u64)
            .map(|i| {
                let (q, order) = (q.clone(), order.clone());
                glommio::spawn_local(async move {
                    q.read(2, i, 1, 4096).await.unwrap();
                    order.borrow_mut().push("read");
                })
            })
            .collect();
        for r in reads {
            r.await;
        }
        write.await;
        let o = order.borrow().clone();
        o
    });
    assert_eq!(order.len(), 32);
    assert_eq!(
        order.iter().position(|&o| o == "write"),
        Some(31),
        "RAM reads waited for the write held at the device: {order:?}"
    );
    drop(throttle);
    drop(t);
    drop(lo);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn file_data_persists_across_restart() {
    let dir = scratch_dir("persist");
    let file = dir.join("p.img");
    sparse_file(&file, 8 << 20);
    let args = ["--subsystem", NQN, "--namespace", file.to_str().unwrap()];
    let t = Target::start(&args);
    let addr = t.addr;
    run(move || async move {
        let (_c, q) = open(addr, Digests::default(), false).await;
        q.write(1, 7, &pattern(3 * 4096, 77), 4096, true)
            .await
            .unwrap();
        q.write(1, 100, &pattern(4096, 78), 4096, false)
            .await
            .unwrap();
        q.flush(1).await.unwrap();
    });
    assert_eq!(t.stop().code(), Some(0));
    let t = Target::start(&args);
    let addr = t.addr;
    run(move || async move {
        let (_c, q) = open(addr, Digests::default(), false).await;
        assert_eq!(q.read(1, 7, 3, 4096).await.unwrap(), pattern(3 * 4096, 77));
        assert_eq!(q.read(1, 100, 1, 4096).await.unwrap(), pattern(4096, 78));
    });
    drop(t);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A file that shrinks under the target: a read past its new end fails
/// (Internal Error: no media error, and no retry can help while it stays
/// short), the error log has it before the host has its completion, and
/// the queue goes on. Such a read is started without a task of its own
/// (`nvme::io_start`): AIO refuses the short read, the ring's read is
/// short again, and the failure's log entry comes from a task.
#[test]
fn a_read_past_the_end_of_a_file_that_shrank_fails_and_is_logged_first() {
    let dir = scratch_dir("shrank");
    let file = dir.join("s.img");
    sparse_file(&file, 8 << 20);
    let t = Target::start(&["--subsystem", NQN, "--namespace", file.to_str().unwrap()]);
    let addr = t.addr;
    let path = file.clone();
    run(move || async move {
        let (c, q) = open(addr, Digests::default(), false).await;
        q.write(1, 1000, &pattern(4096, 9), 4096, false)
            .await
            .unwrap();
        assert_eq!(q.read(1, 1000, 1, 4096).await.unwrap(), pattern(4096, 9));
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .and_then(|f| f.set_len(1 << 20))
            .unwrap();
        assert_eq!(
            status_of(q.read(1, 1000, 1, 4096).await),
            Status::INTERNAL_ERROR
        );
        let el = c.get_log_page(lid::ERROR, 0, 0, 64).await.unwrap();
        assert_eq!(u64::from_le_bytes(el[0..8].try_into().unwrap()), 1);
        let status = u16::from_le_bytes(el[12..14].try_into().unwrap()) >> 1;
        assert_eq!(status, Status::INTERNAL_ERROR.0);
        assert_eq!(u64::from_le_bytes(el[16..24].try_into().unwrap()), 1000);
        round_trip(&q, 1, 4096, 3, 2, 10).await;
    });
    assert_eq!(t.stop().code(), Some(0));
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A block stamped with `version` in every 16 bytes (and the offset).
fn stamped(version: u64) -> Vec<u8> {
    let mut b = vec![0u8; 4096];
    for (i, c) in b.chunks_exact_mut(16).enumerate() {
        c[..8].copy_from_slice(&version.to_le_bytes());
        c[8..].copy_from_slice(&(i as u64).to_le_bytes());
    }
    b
}

/// The version of a block that is one write whole (0 for never written),
/// or None for a torn block.
fn version_of(b: &[u8]) -> Option<u64> {
    if b.iter().all(|&x| x == 0) {
        return Some(0);
    }
    let v = u64::from_le_bytes(b[..8].try_into().unwrap());
    (b == stamped(v).as_slice()).then_some(v)
}

/// Identify says one block is written atomically (AWUN = 0): queues on both
/// cores rewrite one block, each write stamping its own version in every 16
/// bytes, while other queues read it; every read must return one version
/// whole, never part of one write and part of another. RAM and file
/// namespaces.
#[test]
fn one_block_is_read_and_written_whole() {
    let dir = scratch_dir("atomic");
    let img = dir.join("atomic.img");
    sparse_file(&img, 16 << 20);
    let t = Target::start(&[
        "--subsystem",
        NQN,
        "--namespace",
        "ram:16M",
        "--namespace",
        img.to_str().unwrap(),
        "--cores",
        "2",
    ]);
    let addr = t.addr;
    run(move || async move {
        let c = Controller::connect(HostConfig::new(addr, NQN))
            .await
            .unwrap();
        c.set_number_of_queues(8).await.unwrap();
        let mut qs = Vec::new();
        for qid in 1..=8 {
            qs.push(Rc::new(c.connect_io_queue(qid).await.unwrap()));
        }
        let mut report = Vec::new();
        // (namespace, writes per writer task): files are slower.
        for (nsid, writes) in [(1u32, 6000u64), (2, 1500)] {
            let done = Rc::new(std::cell::Cell::new(0usize));
            let torn = Rc::new(std::cell::Cell::new(0usize));
            let reads = Rc::new(std::cell::Cell::new(0usize));
            let mut tasks = Vec::new();
            // Writers: queues 0-3, two tasks each; readers: queues 4-7.
            for w in 0..8u64 {
                let (q, done) = (qs[(w % 4) as usize].clone(), done.clone());
                tasks.push(glommio::spawn_local(async move {
                    for i in 0..writes {
                        let v = (w + 1) << 32 | i;
                        q.write(nsid, 5, &stamped(v), 4096, false).await.unwrap();
                    }
                    done.set(done.get() + 1);
                }));
            }
            for r in 0..8 {
                let q = qs[4 + r % 4].clone();
                let (done, torn, reads) = (done.clone(), torn.clone(), reads.clone());
                tasks.push(glommio::spawn_local(async move {
                    while done.get() < 8 {
                        let b = q.read(nsid, 5, 1, 4096).await.unwrap();
                        reads.set(reads.get() + 1);
                        if version_of(&b).is_none() {
                            torn.set(torn.get() + 1);
                        }
                    }
                }));
            }
            for t in tasks {
                t.await;
            }
            let last = qs[0].read(nsid, 5, 1, 4096).await.unwrap();
            assert!(
                version_of(&last).is_some_and(|v| v > 0),
                "namespace {nsid}: torn at rest"
            );
            report.push((nsid, torn.get(), reads.get()));
        }
        assert!(
            report.iter().all(|&(_, torn, _)| torn == 0),
            "torn reads (namespace, torn, reads): {report:?}"
        );
    });
}

#[test]
fn file_reads_in_flight_together_arrive_whole_and_in_place() {
    // Reads from a file complete in bursts (a virtio disk here completes a
    // host's whole queue at once) and their replies leave together: each
    // must still carry its own blocks, with digests too.
    let dir = scratch_dir("burst");
    let file = dir.join("ns.img");
    sparse_file(&file, 16 << 20);
    let t = Target::start(&[
        "--subsystem",
        NQN,
        "--namespace",
        file.to_str().unwrap(),
        "--cores",
        "1",
    ]);
    let addr = t.addr;
    for digests in [
        Digests::default(),
        Digests {
            header: true,
            data: true,
        },
    ] {
        run(move || async move {
            let (_c, q) = open(addr, digests, false).await;
            // 8 KiB at every 16 KiB: 2 blocks each, 48 places.
            for i in 0..48u64 {
                q.write(1, i * 4, &pattern(8192, i), 4096, false)
                    .await
                    .expect("write");
            }
            for round in 0..4u64 {
                let reads: Vec<_> = (0..48u64)
                    .map(|i| {
                        let q = q.clone();
                        let i = (i + round * 7) % 48;
                        glommio::spawn_local(async move {
                            let back = q.read(1, i * 4, 2, 4096).await.expect("read");
                            assert!(back == pattern(8192, i), "place {i}: data differs");
                        })
                    })
                    .collect();
                for r in reads {
                    r.await;
                }
            }
        });
    }
    drop(t);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn file_reads_to_a_host_that_stops_reading_arrive_whole_and_in_order() {
    // A lone read's reply leaves from its command's task when the writer
    // has nothing to send; to a host that reads slowly (4 KiB receive
    // buffer) through a small send buffer, the socket takes only part of
    // 128 KiB, and the writer must send the rest before anything after it. Each read is sent once the one
    // before has completed, so every one of them is a lone read.
    use common::raw::{enabled_admin, read_cmd, slow_reader, Rx};
    const READS: u64 = 6;
    const BLOCKS: u32 = 32;
    let len = BLOCKS as usize * 4096;
    let dir = scratch_dir("slowhost");
    let file = dir.join("ns.img");
    std::fs::write(&file, pattern(READS as usize * len, 77)).unwrap();
    let spec = format!("{},bs=4096", file.display());
    let t = Target::start(&[
        "--subsystem",
        NQN,
        "--namespace",
        &spec,
        "--cores",
        "1",
        "--socket-buffer",
        "16K",
    ]);
    let want = pattern(READS as usize * len, 77);
    for d in [
        Digests::default(),
        Digests {
            header: true,
            data: true,
        },
    ] {
        let (_admin, cntlid) = enabled_admin(t.addr, d);
        let mut p = slow_reader(t.addr, cntlid, d);
        for i in 0..READS {
            p.send(&read_cmd(10 + i as u16, i * BLOCKS as u64, BLOCKS, d));
            // Long enough for the read to complete and its reply to begin.
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        for i in 0..READS {
            let cid = 10 + i as u16;
            let mut got = Vec::new();
            loop {
                match p.recv() {
                    Some(Rx::Data(h, data, _)) => {
                        assert_eq!(h.cccid, cid, "read {i}: data of another command");
                        assert_eq!(h.offset as usize, got.len(), "read {i}: data out of order");
                        got.extend_from_slice(&data);
                    }
                    Some(Rx::Resp(c)) => {
                        assert_eq!(c.cid, cid, "read {i}: completion out of order");
                        assert!(c.status.is_success(), "read {i}: {c:?}");
                        break;
                    }
                    other => panic!("read {i}: {other:?}"),
                }
            }
            let at = i as usize * len;
            assert!(got == want[at..at + len], "read {i}: data differs");
        }
    }
    drop(t);
    std::fs::remove_dir_all(&dir).unwrap();
}
