//! Real block devices and real backing errors, through loop devices: a
//! loop device served as a namespace (its logical block size, BLKZEROOUT,
//! BLKDISCARD), and a sparse file on a full file system, whose ENOSPC must
//! become an NVMe status while the target keeps serving.

mod common;
use common::devices::{sh, Loop, Mount, Throttle, Zram};
use common::*;
use nvmf_tpc::host::{Controller, HostConfig, HostError};
use nvmf_tpc::wire::identify::cns;
use nvmf_tpc::wire::log_page::lid;
use nvmf_tpc::wire::status::Status;
use std::path::Path;

#[test]
fn block_device_namespace() {
    let dir = scratch_dir("blk");
    let img = dir.join("blk.img");
    sparse_file(&img, 32 << 20);
    let lo = Loop::attach(&img);
    let t = Target::start(&["--subsystem", NQN, "--namespace", &lo.0]);
    assert!(t.output().contains("block device"), "{}", t.output());
    let addr = t.addr;
    run(move || async move {
        let c = Controller::connect(HostConfig::new(addr, NQN))
            .await
            .unwrap();
        // The device's logical block size (512 for a loop device).
        assert_eq!(
            c.namespace_geometry(1).await.unwrap(),
            ((32 << 20) / 512, 512)
        );
        let ns = c.identify(cns::NAMESPACE, 1).await.unwrap();
        assert_eq!(
            ns[33] & 0x7,
            0,
            "block devices do not promise zeroes after deallocate"
        );
        let q = c.connect_io_queue(1).await.unwrap();
        let data: Vec<u8> = (0..65536u32).map(|i| (i * 13 % 256) as u8).collect();
        q.write(1, 1000, &data, 512, true).await.unwrap();
        assert_eq!(q.read(1, 1000, 128, 512).await.unwrap(), data);
        q.write_zeroes(1, 1001, 2).await.unwrap();
        let back = q.read(1, 1000, 4, 512).await.unwrap();
        assert_eq!(&back[..512], &data[..512]);
        assert!(back[512..1536].iter().all(|&b| b == 0));
        assert_eq!(&back[1536..], &data[1536..2048]);
        q.deallocate(1, &[(2000, 64)]).await.unwrap();
        q.flush(1).await.unwrap();
    });
    assert_eq!(t.stop().code(), Some(0));
    // The data went to the device.
    let on_disk = std::fs::read(&img).unwrap();
    assert_eq!(on_disk[1000 * 512], 0);
    assert_eq!(on_disk[1000 * 512 + 1], 13);
    // Blocks larger than the device's physical block (512 for a loop
    // device) may tear in a power cut, which Identify cannot say: warned.
    let spec = format!("{},bs=4096", lo.0);
    let t = Target::start(&["--subsystem", NQN, "--namespace", &spec]);
    assert!(
        t.log().contains("may be torn by a power cut"),
        "{}",
        t.log()
    );
    assert_eq!(t.stop().code(), Some(0));
    drop(lo);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A block device served by one target is claimed (O_EXCL and a lock): a
/// second target refuses it and names the holder; so is a mounted device.
/// zram is bio-based and never declared that it takes I/O without
/// blocking, so io_uring would hand each read and write to a worker thread:
/// it is served through Linux AIO, and its data must come back the same,
/// also when a write waits long in the device (throttled here), and once
/// its reads go by plain calls.
#[test]
fn a_device_that_cannot_take_io_without_blocking_is_served_through_aio() {
    use nvmf_tpc::storage::file::takes_nowait;
    use std::os::unix::fs::OpenOptionsExt;
    use std::os::unix::io::AsRawFd;
    let Some(z) = Zram::add(64 << 20) else {
        eprintln!("SKIPPED: this kernel has no zram");
        return;
    };
    let open = |p: &str| {
        std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECT)
            .open(p)
            .unwrap()
    };
    assert!(!takes_nowait(open(&z.0).as_raw_fd()));
    let dir = scratch_dir("zram");
    let img = dir.join("lo.img");
    sparse_file(&img, 1 << 20);
    let lo = Loop::attach(&img);
    assert!(takes_nowait(open(&lo.0).as_raw_fd()), "a loop device does");
    drop(lo);

    let t = Target::start(&["--subsystem", NQN, "--namespace", &z.0]);
    assert!(
        t.output()
            .contains("through Linux AIO: it cannot take I/O without blocking"),
        "{}",
        t.output()
    );
    let addr = t.addr;
    let throttle = Throttle::new("zram", &z, 64 << 10, t.pid());
    run(move || async move {
        let c = Controller::connect(HostConfig::new(addr, NQN))
            .await
            .unwrap();
        assert_eq!(
            c.namespace_geometry(1).await.unwrap(),
            ((64 << 20) / 4096, 4096)
        );
        let q = c.connect_io_queue(32).await.unwrap();
        let pattern = |seed: u32| -> Vec<u8> {
            (0..65536u32)
                .map(|i| (i.wrapping_mul(seed) >> 3) as u8)
                .collect()
        };
        // Writes throttled to 64 KiB/s: each 64 KiB write waits about a
        // second in the device before it completes.
        for (i, slba) in [100u64, 3000, 9000].iter().enumerate() {
            q.write(1, *slba, &pattern(i as u32 + 7), 4096, i == 1)
                .await
                .unwrap();
        }
        q.flush(1).await.unwrap();
        for (i, slba) in [100u64, 3000, 9000].iter().enumerate() {
            assert_eq!(
                q.read(1, *slba, 16, 4096).await.unwrap(),
                pattern(i as u32 + 7)
            );
        }
        // After 1,024 reads completed inside `io_submit`, zram is read by
        // plain calls (`storage::in_call`): the same data either way.
        let want = pattern(8);
        for i in 0..1200u64 {
            let k = (i % 16) as usize;
            let got = q.read(1, 3000 + k as u64, 1, 4096).await.unwrap();
            assert_eq!(got, want[k * 4096..][..4096], "read {i}");
        }
    });
    assert!(
        t.log().contains("plain calls from now"),
        "zram's reads did not go to plain calls:\n{}",
        t.log()
    );
    drop(throttle);
    // The I/O went through an AIO context (its ring is mapped from the
    // kernel's aio file system).
    let maps = std::fs::read_to_string(format!("/proc/{}/maps", t.pid())).unwrap();
    assert!(maps.contains("[aio]"), "no AIO context in the target");
    assert_eq!(t.stop().code(), Some(0));
    // The data is on the device itself.
    use std::io::{Read, Seek, SeekFrom};
    let mut dev = std::fs::File::open(&z.0).unwrap();
    let mut back = vec![0u8; 65536];
    dev.seek(SeekFrom::Start(3000 * 4096)).unwrap();
    dev.read_exact(&mut back).unwrap();
    assert_eq!(
        back,
        (0..65536u32)
            .map(|i| (i.wrapping_mul(8) >> 3) as u8)
            .collect::<Vec<_>>()
    );
}

/// A device whose reads wait (zram under a cgroup read limit: most reads
/// are held by the throttle) is never read by plain calls, which would stop
/// the core while each waits (`storage::in_call`): reads that completed in
/// their call come in runs far shorter than the 1,024 it takes.
#[test]
fn a_device_whose_reads_wait_keeps_aio() {
    let Some(z) = Zram::add(16 << 20) else {
        eprintln!("SKIPPED: this kernel has no zram");
        return;
    };
    let t = Target::start(&["--subsystem", NQN, "--namespace", &z.0]);
    let addr = t.addr;
    // 2,048 reads of 4 KiB a second.
    let throttle = Throttle::reads("zram-reads", &z, 8 << 20, t.pid());
    run(move || async move {
        let c = Controller::connect(HostConfig::new(addr, NQN))
            .await
            .unwrap();
        let q = c.connect_io_queue(32).await.unwrap();
        let data = pattern(16 * 4096, 64);
        q.write(1, 64, &data, 4096, false).await.unwrap();
        for i in 0..1500u64 {
            let k = (i % 16) as usize;
            let got = q.read(1, 64 + k as u64, 1, 4096).await.unwrap();
            assert_eq!(got, data[k * 4096..][..4096], "read {i}");
        }
    });
    drop(throttle);
    assert!(
        !t.log().contains("plain calls from now"),
        "reads that wait went to plain calls:\n{}",
        t.log()
    );
    assert_eq!(t.stop().code(), Some(0));
}

#[test]
fn a_claimed_or_mounted_block_device_is_refused() {
    let dir = scratch_dir("blkclaim");
    let img = dir.join("blk.img");
    sparse_file(&img, 16 << 20);
    let lo = Loop::attach(&img);
    let a = Target::start(&["--subsystem", NQN, "--namespace", &lo.0]);
    match Target::try_start(&["--subsystem", NQN, "--namespace", &lo.0]) {
        Ok(t) => panic!("a second target started on {}:\n{}", lo.0, t.output()),
        Err((_, out)) => assert!(
            out.contains(&format!("in use by process {}", a.pid())),
            "{out}"
        ),
    }
    drop(a);
    sh("mkfs.ext4", &["-q", "-F", &lo.0]).expect("mkfs.ext4");
    let mounted = Mount::new(&[&lo.0], &dir.join("mnt"));
    let refused = Target::try_start(&["--subsystem", NQN, "--namespace", &lo.0]);
    drop(mounted);
    match refused {
        Ok(t) => panic!("served a mounted device:\n{}", t.output()),
        Err((_, out)) => assert!(out.contains("mounted"), "{out}"),
    }
    drop(lo);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The threads of process `pid`: thread id → name.
fn threads(pid: u32) -> std::collections::HashMap<String, String> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .map(|e| {
            let tid = e.unwrap().file_name().to_string_lossy().into_owned();
            let comm =
                std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/comm")).unwrap_or_default();
            (tid, comm.trim().to_string())
        })
        .collect()
}

/// Write Zeroes (BLKZEROOUT) and Deallocate (BLKDISCARD) on a block device
/// are system calls that can take seconds; they run on the executor's
/// blocking pool, never on an executor thread (where they stalled every
/// queue of the core and its keep-alive answers). The kernel's syscall
/// tracepoint names the thread that issued each ioctl.
#[test]
fn block_device_zeroes_and_discards_run_off_the_executor() {
    let dir = scratch_dir("blkpool");
    let img = dir.join("blk.img");
    sparse_file(&img, 32 << 20);
    let lo = Loop::attach(&img);
    let trace = trace::Trace::start(
        "blkpool",
        &[("syscalls/sys_enter_ioctl", "cmd == 0x127f || cmd == 0x1277")],
    );
    let t = Target::start(&["--subsystem", NQN, "--namespace", &lo.0, "--cores", "1"]);
    let addr = t.addr;
    run(move || async move {
        let c = Controller::connect(HostConfig::new(addr, NQN))
            .await
            .unwrap();
        let q = c.connect_io_queue(1).await.unwrap();
        let data = pattern(8192, 3);
        q.write(1, 0, &data, 512, true).await.unwrap();
        q.write_zeroes(1, 0, 8).await.unwrap();
        q.deallocate(1, &[(100, 64)]).await.unwrap();
        assert_eq!(q.read(1, 0, 16, 512).await.unwrap()[..4096], [0u8; 4096]);
    });
    let names = threads(t.pid());
    let executor = t
        .log()
        .lines()
        .find_map(|l| l.split("core 0 runs on thread ").nth(1)?.split(' ').next())
        .expect("the target logs its executor's thread id")
        .to_string();
    let ours: Vec<(String, String)> = trace
        .lines()
        .iter()
        .filter_map(|l| {
            // "comm-tid [cpu] flags time: sys_ioctl(fd: .., cmd: 127f, ..)"
            let task = l.split_whitespace().next()?;
            let tid = task.rsplit('-').next()?.to_string();
            names.get(&tid)?;
            let name = if tid == executor { "executor" } else { "other" }.to_string();
            let cmd = if l.contains("cmd: 0x127f") {
                "BLKZEROOUT"
            } else {
                "BLKDISCARD"
            };
            Some((name, cmd.to_string()))
        })
        .collect();
    assert!(
        ours.iter().any(|(_, c)| c == "BLKZEROOUT") && ours.iter().any(|(_, c)| c == "BLKDISCARD"),
        "the target's ioctls were not seen: {ours:?}\n{:?}",
        trace.lines()
    );
    for (name, cmd) in &ours {
        assert_ne!(name, "executor", "{cmd} ran on the executor thread");
    }
    assert_eq!(t.stop().code(), Some(0));
    drop(lo);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Fill the file system under `dir` until it has no room left.
fn fill(dir: &Path) {
    use std::io::Write;
    let mut f = std::fs::File::create(dir.join("filler")).unwrap();
    let chunk = vec![1u8; 64 << 10];
    while f.write_all(&chunk).is_ok() {}
    let _ = f.sync_all();
}

fn nuse(ns: &[u8]) -> u64 {
    u64::from_le_bytes(ns[16..24].try_into().unwrap())
}

/// Write Zeroes without DEAC zeroes a file's range in place: the blocks stay
/// allocated, so a later write there succeeds on a full file system (it
/// punched holes, and the write then failed with Capacity Exceeded). With
/// DEAC the blocks are released. NUSE counts the blocks the file holds.
#[test]
fn write_zeroes_keeps_space_unless_deallocate_is_asked() {
    let dir = scratch_dir("wzspace");
    let fs = Mount::small_ext4(&dir, 16);
    let backing = fs.0.join("thick.img");
    std::fs::write(&backing, pattern(4 << 20, 9)).unwrap();
    let sparse = fs.0.join("sparse.img");
    sparse_file(&sparse, 8 << 20);
    let t = Target::start(&[
        "--subsystem",
        NQN,
        "--namespace",
        backing.to_str().unwrap(),
        "--namespace",
        sparse.to_str().unwrap(),
    ]);
    let addr = t.addr;
    let mnt = fs.0.clone();
    run(move || async move {
        let c = Controller::connect(HostConfig::new(addr, NQN))
            .await
            .unwrap();
        let q = c.connect_io_queue(1).await.unwrap();
        assert_eq!(nuse(&c.identify(cns::NAMESPACE, 1).await.unwrap()), 1024);
        // A sparse file holds only what was written: the target writes
        // nothing of its own.
        assert_eq!(nuse(&c.identify(cns::NAMESPACE, 2).await.unwrap()), 0);
        q.write(2, 10, &pattern(3 * 4096, 1), 4096, true)
            .await
            .unwrap();
        assert_eq!(nuse(&c.identify(cns::NAMESPACE, 2).await.unwrap()), 3);
        q.write_zeroes(1, 0, 256).await.unwrap();
        for lba in (0..256).step_by(32) {
            assert_eq!(
                q.read(1, lba, 32, 4096).await.unwrap(),
                vec![0u8; 128 << 10]
            );
        }
        assert_eq!(nuse(&c.identify(cns::NAMESPACE, 1).await.unwrap()), 1024);
        fill(&mnt);
        for lba in (0..256).step_by(32) {
            let data = pattern(128 << 10, lba);
            q.write(1, lba, &data, 4096, true)
                .await
                .expect("a zeroed range keeps its space");
            assert_eq!(q.read(1, lba, 32, 4096).await.unwrap(), data);
        }
        q.write_zeroes_deallocate(1, 512, 256).await.unwrap();
        assert_eq!(q.read(1, 512, 1, 4096).await.unwrap(), vec![0u8; 4096]);
        assert_eq!(nuse(&c.identify(cns::NAMESPACE, 1).await.unwrap()), 768);
    });
    assert_eq!(t.stop().code(), Some(0));
    drop(fs);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn enospc_becomes_a_status_and_the_target_keeps_serving() {
    let dir = scratch_dir("enospc");
    let fs = Mount::small_ext4(&dir, 16);
    let mnt = fs.0.clone();
    // A 64 MiB sparse file on a 16 MiB file system.
    let backing = mnt.join("thin.img");
    sparse_file(&backing, 64 << 20);
    let t = Target::start(&["--subsystem", NQN, "--namespace", backing.to_str().unwrap()]);
    let addr = t.addr;
    run(move || async move {
        let c = Controller::connect(HostConfig::new(addr, NQN))
            .await
            .unwrap();
        let q = c.connect_io_queue(1).await.unwrap();
        let chunk = vec![0xABu8; 128 * 1024];
        let mut failed = None;
        for i in 0..(64 << 20) / chunk.len() as u64 {
            match q.write(1, i * 32, &chunk, 4096, false).await {
                Ok(_) => {}
                Err(HostError::Status(s, _)) => {
                    failed = Some((i, s));
                    break;
                }
                Err(e) => panic!("transport failed instead of a status: {e:?}"),
            }
        }
        let (at, s) = failed.expect("a 16 MiB file system took 64 MiB");
        assert_eq!(s, Status::CAPACITY_EXCEEDED, "after {at} chunks");
        // Earlier data is intact and the queue still works.
        assert_eq!(q.read(1, 0, 32, 4096).await.unwrap(), chunk);
        // The entry reaches the controller's core by message, after the
        // completion: look until it is there.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while c.get_log_page(lid::ERROR, 0, 0, 64).await.unwrap()[0] == 0 {
            assert!(std::time::Instant::now() < deadline, "no error log entry");
            glommio::timer::sleep(std::time::Duration::from_millis(10)).await;
        }
        q.read(1, 0, 1, 4096).await.unwrap();
    });
    assert_eq!(t.stop().code(), Some(0));
}

/// A file system whose device runs out of room underneath (a loop device
/// over a sparse file on a 6 MiB tmpfs: thin provisioning gone wrong).
/// Failed writes and flushes complete with DNR (a retried flush could
/// succeed over lost data), and a flush that fails at SIGTERM makes the
/// target log it and exit non-zero.
#[test]
fn a_failing_device_fails_writes_and_flushes_for_good_and_the_exit_status_says_so() {
    let dir = scratch_dir("thinfail");
    let tm = dir.join("tm");
    std::fs::create_dir_all(&tm).unwrap();
    let _tm = Mount::new(&["-t", "tmpfs", "-o", "size=6M", "tmpfs"], &tm);
    let dev = tm.join("dev.img");
    sparse_file(&dev, 64 << 20);
    let lo = Loop::attach(&dev);
    // A journal left unwritten by mkfs takes room on the device when it
    // is first written, so its first commit after the device is full fails.
    sh(
        "mkfs.ext4",
        &[
            "-q",
            "-F",
            "-E",
            "lazy_journal_init=1,lazy_itable_init=1",
            &lo.0,
        ],
    )
    .expect("mkfs.ext4");
    // Journal commits every second, so the file system meets the full
    // device soon.
    let mounted = Mount::new(&["-o", "commit=1", &lo.0], &dir.join("mnt"));
    let mnt = mounted.0.clone();
    let ns = mnt.join("ns.img");
    sparse_file(&ns, 32 << 20);
    let t = Target::start(&[
        "--subsystem",
        NQN,
        "--namespace",
        ns.to_str().unwrap(),
        "--cores",
        "1",
    ]);
    let addr = t.addr;
    run(move || async move {
        let c = Controller::connect(HostConfig::new(addr, NQN))
            .await
            .unwrap();
        let q = c.connect_io_queue(1).await.unwrap();
        let chunk = pattern(128 << 10, 5);
        let mut failed = None;
        for lba in (0..(32u64 << 20) / 4096).step_by(32) {
            if let Err(e) = q.write(1, lba, &chunk, 4096, false).await {
                failed = Some(e.status().expect("a status, not a transport failure"));
                break;
            }
        }
        let s = failed.expect("6 MiB of device took 32 MiB of writes");
        assert!(s.dnr(), "failed write without DNR: {s}");
        // The file system fails too once its journal cannot be written
        // (then every flush fails): wait for that, with a deadline.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        let mut lba = 0;
        let f = loop {
            if let Err(e) = q.flush(1).await {
                break e.status().expect("a status");
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no flush failed on a device without room"
            );
            let _ = q.write(1, lba, &chunk[..4096], 4096, false).await;
            lba = (lba + 97) % 8192;
        };
        assert!(f.dnr(), "failed flush without DNR: {f}");
        // The kernel reported the error once; the target keeps reporting it.
        assert!(status_of(q.flush(1).await).dnr());
        assert!(status_of(q.write(1, 0, &chunk[..4096], 4096, true).await).dnr());
    });
    let st = t.stop_with_output();
    assert_ne!(
        st.0.code(),
        Some(0),
        "exit status 0 after a failed flush:\n{}",
        st.1
    );
    assert!(st.1.contains("flush at shutdown failed"), "{}", st.1);
}

/// A loop device's worker thread takes its I/O, so the core hands it the
/// CPU; zram does the work in the submitting call, so it does not.
#[test]
fn a_loop_device_has_a_thread_to_hand_over_to_and_zram_has_none() {
    use nvmf_tpc::storage::threaded::wakes_a_thread;
    use std::os::unix::fs::MetadataExt;
    let rdev = |dev: &str| std::fs::metadata(dev).unwrap().rdev();
    let dir = scratch_dir("blkthread");
    let img = dir.join("t.img");
    sparse_file(&img, 1 << 20);
    let lo = Loop::attach(&img);
    assert!(wakes_a_thread(rdev(&lo.0)), "{}", lo.0);
    match Zram::add(1 << 20) {
        Some(z) => assert!(!wakes_a_thread(rdev(&z.0)), "{}", z.0),
        None => eprintln!("SKIPPED (zram half): this kernel has no zram"),
    }
}
