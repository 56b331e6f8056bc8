//! The ring against real files and pipes on one executor.

use super::*;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::time::Instant;

fn run<F: Future<Output = ()> + 'static>(f: impl FnOnce() -> F + Send + 'static) {
    glommio::LocalExecutorBuilder::default()
        .spawn(f)
        .unwrap()
        .join()
        .unwrap();
}

/// A new file of `len` bytes in the temporary directory, read-write.
fn temp_file(name: &str, len: u64) -> (std::path::PathBuf, Rc<OwnedFd>) {
    let path = std::env::temp_dir().join(format!("{name}-{}", std::process::id()));
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .unwrap();
    f.set_len(len).unwrap();
    (path, Rc::new(OwnedFd::from(f)))
}

fn buffer(fill: u8) -> DmaBuffer {
    let mut b = glommio::allocate_dma_buffer(4096);
    b.as_bytes_mut().fill(fill);
    b
}

#[test]
fn writes_reads_syncs_and_reports_the_errno() {
    run(|| async {
        let (path, file) = temp_file("uring", 8192);
        let ring = Ring::current().unwrap();
        let (n, _) = ring.write(&file, 4096, buffer(7), Submit::Gather).await;
        assert_eq!(n.unwrap(), 4096);
        ring.fdatasync(&file).await.unwrap();
        let (n, b) = ring.read(&file, 4096, buffer(0)).await;
        assert_eq!(n.unwrap(), 4096);
        assert!(b.as_bytes().iter().all(|&x| x == 7));
        // Past the end: a short read, not an error.
        let (n, _) = ring.read(&file, 8192, buffer(0)).await;
        assert_eq!(n.unwrap(), 0);
        let mode = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
        ring.fallocate(&file, mode, 4096, 4096).await.unwrap();
        let (_, b) = ring.read(&file, 4096, buffer(1)).await;
        assert!(b.as_bytes().iter().all(|&x| x == 0));
        // A file opened read-only cannot be written: EBADF comes back.
        let ro = Rc::new(OwnedFd::from(std::fs::File::open(&path).unwrap()));
        let (n, _) = ring.write(&ro, 0, buffer(1), Submit::Now).await;
        assert_eq!(n.unwrap_err().raw_os_error(), Some(libc::EBADF));
        assert_eq!(in_flight(), 0);
        std::fs::remove_file(&path).unwrap();
    });
}

/// Alone, a write goes to the kernel at once; while others are in
/// flight writes are gathered, and still all go within the round; a
/// read, and a write asked to go now, go at once. A `Gather` write waits
/// only while more of its burst is received, and the last one takes the
/// gathered ones along; a `GatherHandOver` write waits regardless.
#[test]
fn a_lone_operation_goes_at_once_and_a_burst_is_gathered() {
    run(|| async {
        let (path, file) = temp_file("uring-g", 64 * 4096);
        let ring = Ring::current().unwrap();
        let lone = ring.write(&file, 0, buffer(1), Submit::Gather);
        // (glommio runs a spawned task's first poll at once: the reaper
        // may already have reaped it.)
        assert_eq!(ring.enters.get(), 1);
        assert_eq!(ring.queued.get() + ring.backlog.borrow().len() as u32, 0);
        lone.await.0.unwrap();
        // A burst of 16 while one is in flight.
        burst_continues(true);
        let before = ring.enters.get();
        let mut ops: Vec<_> = (0..17u8)
            .map(|i| ring.write(&file, (i as u64 + 1) * 4096, buffer(i), Submit::Gather))
            .collect();
        assert_eq!(ring.enters.get() - before, 1 + 16 / GATHER as u64);
        // A read (of the lone write's block) does not wait to be gathered.
        let read = ring.read(&file, 0, buffer(0));
        assert_eq!(ring.enters.get() - before, 2 + 16 / GATHER as u64);
        assert_eq!(read.await.1.as_bytes()[0], 1);
        // The end of a burst, while the others are still in flight.
        ops.push(ring.write(&file, 40 * 4096, buffer(40), Submit::Gather));
        let before = ring.enters.get();
        ops.push(ring.write(&file, 41 * 4096, buffer(41), Submit::Gather));
        assert_eq!(ring.enters.get(), before, "more of the burst is coming");
        burst_continues(false);
        ops.push(ring.write(&file, 42 * 4096, buffer(42), Submit::Gather));
        assert_eq!(ring.enters.get(), before + 1, "the burst's last goes");
        assert_eq!(ring.queued.get() + ring.backlog.borrow().len() as u32, 0);
        ops.push(ring.write(&file, 43 * 4096, buffer(43), Submit::GatherHandOver));
        assert_eq!(ring.enters.get(), before + 1, "a threaded device's waits");
        let before = ring.enters.get();
        for op in ops.drain(..) {
            assert_eq!(op.await.0.unwrap(), 4096);
        }
        assert!(ring.enters.get() - before <= 3 + 16 / GATHER as u64);
        // Writes that go now, each while the others are in flight.
        let before = ring.enters.get();
        let now: Vec<_> = (0..8u8)
            .map(|i| ring.write(&file, (i as u64 + 20) * 4096, buffer(i), Submit::Now))
            .collect();
        assert_eq!(ring.enters.get() - before, 8);
        for op in now {
            assert_eq!(op.await.0.unwrap(), 4096);
        }
        for i in 0..17u8 {
            let (n, b) = ring.read(&file, (i as u64 + 1) * 4096, buffer(0xff)).await;
            assert_eq!(n.unwrap(), 4096);
            assert!(b.as_bytes().iter().all(|&x| x == i));
        }
        std::fs::remove_file(&path).unwrap();
    });
}

/// Operations of a block device that may have a thread hand the CPU over
/// once they went and are still in the kernel; a file's (`Submit::Now`)
/// and those of a device without a thread (`Submit::Gather`) do not, and
/// neither do those the kernel finished in the submitting call.
#[test]
fn a_threaded_devices_io_still_in_the_kernel_hands_the_cpu_over() {
    run(|| async {
        let (path, file) = temp_file("uring-h", 16 * 4096);
        let ring = Ring::current().unwrap();
        let lone = ring.write(&file, 0, buffer(1), Submit::GatherHandOver);
        assert_eq!(ring.handovers.get(), 1);
        lone.await.0.unwrap();
        let direct = ring.write(&file, 0, buffer(1), Submit::Gather);
        assert_eq!(ring.in_kernel.get(), 1, "went, and is still in the kernel");
        assert_eq!(ring.handovers.get(), 1);
        direct.await.0.unwrap();
        let now: Vec<_> = (0..4u8)
            .map(|i| ring.write(&file, (i as u64 + 1) * 4096, buffer(i), Submit::Now))
            .collect();
        let read = ring.read(&file, 0, buffer(0));
        for op in now {
            op.await.0.unwrap();
        }
        assert_eq!(read.await.1.as_bytes()[0], 1);
        assert_eq!(ring.handovers.get(), 1);
        // A threaded device's read yields as its writes do; this one (AIO on
        // a file without O_DIRECT) is done within `io_submit`, so there is
        // nobody to yield to.
        let (n, b) = ring
            .aio_read(&file, 0, buffer(0), false, Submit::GatherHandOver)
            .await;
        assert_eq!((n.unwrap(), b.as_bytes()[0]), (4096, 1));
        assert_eq!(ring.handovers.get(), 1);
        // Gathered writes that completed before the hand-over (as zram's
        // do in the submitting call) leave nothing to hand over to.
        assert_eq!(ring.in_kernel.get(), 0);
        ring.handing_over.set(true);
        ring.hand_over();
        assert_eq!(ring.handovers.get(), 1);
        assert!(!ring.handing_over.get());
        std::fs::remove_file(path).unwrap();
    });
}

#[test]
fn a_dropped_operation_keeps_its_buffer_until_the_kernel_is_done() {
    run(|| async {
        let (rx, mut tx) = std::io::pipe().unwrap();
        let rx = Rc::new(OwnedFd::from(rx));
        let ring = Ring::current().unwrap();
        // A read of an empty pipe waits in the kernel; its command
        // gives up on it.
        let gave_up = futures_lite::future::or(
            async {
                let _ = ring.read(&rx, 0, buffer(0)).await;
                false
            },
            async {
                glommio::timer::sleep(Duration::from_millis(20)).await;
                true
            },
        )
        .await;
        assert!(gave_up);
        assert_eq!(in_flight(), 1, "the read is still the kernel's");
        // Its data arrives later, into the buffer the ring kept.
        tx.write_all(&[5u8; 100]).unwrap();
        let t = Instant::now();
        while in_flight() > 0 && t.elapsed() < Duration::from_secs(5) {
            glommio::timer::sleep(Duration::from_millis(1)).await;
        }
        assert_eq!(in_flight(), 0);
        assert!(ring.ops.borrow().is_empty());
    });
}

/// I/O slower than the poll window: the core sleeps, and the completion
/// wakes it (the timer alone would see it up to an eighth of its wait
/// late, up to `MAX_BACKOFF`).
#[test]
fn a_completion_wakes_a_core_that_sleeps_on_slow_io() {
    run(|| async {
        let ring = Ring::current().unwrap();
        assert!(
            ring.signal.is_some(),
            "the kernel takes a completion eventfd"
        );
        let (rx, mut tx) = std::io::pipe().unwrap();
        let rx = Rc::new(OwnedFd::from(rx));
        let before = ring.signalled.get();
        for _ in 0..3 {
            let read = ring.read(&rx, 0, buffer(0));
            // The pipe gets its byte long after the poll window.
            let mut w = tx.try_clone().unwrap();
            let writer = std::thread::spawn(move || {
                std::thread::sleep(IO_POLL * 30);
                w.write_all(&[9]).unwrap();
            });
            let (n, b) = read.await;
            assert_eq!(n.unwrap(), 1);
            assert_eq!(b.as_bytes()[0], 9);
            writer.join().unwrap();
        }
        // A timer could end a sleep just as the byte lands (rarely).
        assert!(ring.signalled.get() - before >= 2, "woken by completions");
        tx.flush().unwrap();
    });
}

/// Linux AIO through the same ring: results, a short read, an error the
/// kernel gives at submission, and a dropped operation.
#[test]
fn aio_writes_reads_and_reports_the_errno() {
    run(|| async {
        let (path, file) = temp_file("uring-aio", 8192);
        let ring = Ring::current().unwrap();
        let (n, _) = ring
            .aio_write(&file, 4096, buffer(3), false, Submit::Now)
            .await;
        assert_eq!(n.unwrap(), 4096);
        let (n, b) = ring
            .aio_read(&file, 4096, buffer(0), false, Submit::Now)
            .await;
        assert_eq!(n.unwrap(), 4096);
        assert!(b.as_bytes().iter().all(|&x| x == 3));
        // What one way wrote, the other reads.
        let (n, b) = ring.read(&file, 4096, buffer(0)).await;
        assert_eq!(n.unwrap(), 4096);
        assert_eq!(b.as_bytes()[4095], 3);
        let (n, _) = ring
            .aio_read(&file, 8192, buffer(0), false, Submit::Now)
            .await;
        assert_eq!(n.unwrap(), 0, "past the end: a short read");
        let ro = Rc::new(OwnedFd::from(std::fs::File::open(&path).unwrap()));
        let (n, _) = ring.aio_write(&ro, 0, buffer(1), false, Submit::Now).await;
        assert_eq!(n.unwrap_err().raw_os_error(), Some(libc::EBADF));
        // A burst, one dropped unawaited.
        let ops: Vec<_> = (0..16u8)
            .map(|i| ring.aio_write(&file, (i as u64 % 2) * 4096, buffer(i), false, Submit::Now))
            .collect();
        let mut ops = ops.into_iter();
        drop(ops.next());
        for op in ops {
            assert_eq!(op.await.0.unwrap(), 4096);
        }
        let t = Instant::now();
        while in_flight() > 0 && t.elapsed() < Duration::from_secs(5) {
            glommio::timer::sleep(Duration::from_millis(1)).await;
        }
        assert_eq!(in_flight(), 0);
        assert!(ring.ops.borrow().is_empty());
        std::fs::remove_file(&path).unwrap();
    });
}

/// Where the kernel refuses an AIO context (the system's `fs.aio-max-nr`
/// is used up), AIO operations go through the ring: slower, never an error.
#[test]
fn aio_operations_use_the_ring_where_the_kernel_has_no_context_left() {
    run(|| async {
        let (path, file) = temp_file("uring-noaio", 8192);
        let ring = Ring::current().unwrap();
        ring.aio_unavailable.set(true);
        let before = ring.enters.get();
        let (n, _) = ring
            .aio_write(&file, 4096, buffer(5), false, Submit::Now)
            .await;
        assert_eq!(n.unwrap(), 4096);
        let (n, b) = ring
            .aio_read(&file, 4096, buffer(0), false, Submit::Now)
            .await;
        assert_eq!(n.unwrap(), 4096);
        assert!(b.as_bytes().iter().all(|&x| x == 5));
        assert_eq!(ring.enters.get() - before, 2, "both went through the ring");
        assert!(ring.aio.borrow().is_none());
        std::fs::remove_file(&path).unwrap();
    });
}

/// AIO writes asked to be gathered go several to an `io_submit` while
/// others are in flight (on an O_DIRECT file: completions come from the
/// disk, not within the call); a lone one and a read go at once.
#[test]
fn aio_writes_are_gathered_while_others_are_in_flight() {
    run(|| async {
        let (path, _) = temp_file("uring-aio-g", 64 * 4096);
        let file: Rc<OwnedFd> = Rc::new(
            std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .custom_flags(libc::O_DIRECT)
                .open(&path)
                .unwrap()
                .into(),
        );
        let ring = Ring::current().unwrap();
        ring.aio_write(&file, 0, buffer(1), false, Submit::Gather)
            .await
            .0
            .unwrap();
        assert_eq!(ring.aio_submits.get(), 1, "alone: at once");
        burst_continues(true);
        let before = ring.aio_submits.get();
        let ops: Vec<_> = (0..17u8)
            .map(|i| {
                ring.aio_write(
                    &file,
                    (i as u64 + 1) * 4096,
                    buffer(i),
                    false,
                    Submit::Gather,
                )
            })
            .collect();
        let submits = ring.aio_submits.get() - before;
        // 1 + 16 / GATHER, or a little more where a whole batch completed
        // within its own call (a busy host can stop this thread that long).
        assert!(
            (1 + 16 / GATHER as u64..=3 + 16 / GATHER as u64).contains(&submits),
            "{submits} io_submits for 17 writes"
        );
        let read = ring.aio_read(&file, 0, buffer(0), false, Submit::Now);
        assert_eq!(
            ring.aio_submits.get() - before,
            submits + 1,
            "a read goes at once"
        );
        assert_eq!(read.await.1.as_bytes()[0], 1);
        for op in ops {
            assert_eq!(op.await.0.unwrap(), 4096);
        }
        for i in 0..17u8 {
            let (n, b) = ring
                .aio_read(
                    &file,
                    (i as u64 + 1) * 4096,
                    buffer(0xff),
                    false,
                    Submit::Now,
                )
                .await;
            assert_eq!(n.unwrap(), 4096);
            assert!(b.as_bytes().iter().all(|&x| x == i));
        }
        std::fs::remove_file(&path).unwrap();
    });
}
