//! `FileBackend`'s tests: the ways to the kernel, on files in the
//! temporary directory.

use super::*;

/// On the AIO route, a device seen completing reads inside `io_submit`
/// is then served by plain calls, and one seen waiting goes back to
/// AIO (`in_call`). A file stands in for such a device: reading its
/// holes is a copy of zeroes in the call, reading its written blocks
/// waits for the disk.
#[test]
fn plain_calls_while_the_device_completes_in_the_call() {
    glommio::LocalExecutorBuilder::default()
        .spawn(|| async {
            let path = std::env::temp_dir().join(format!("file-in-call-{}", std::process::id()));
            create_sparse(&path, 8 << 20).unwrap();
            let mut f = FileBackend::open(&path, false).unwrap();
            f.route = Route::Aio;
            let mut reads = 0;
            while !f.completes_in_call() {
                let got = f.read((reads % 2048) * 4096, 4096).await.unwrap();
                assert!(got.as_bytes().iter().all(|&b| b == 0));
                reads += 1;
                assert!(reads <= 4096, "holes read in the call did not switch");
            }
            let mut buf = crate::storage::dma_buffer(8192);
            buf.as_bytes_mut().fill(0x3c);
            f.write(1 << 20, buf).await.unwrap();
            assert!(f.completes_in_call(), "a write through AIO changes nothing");
            let got = f.read(1 << 20, 8192).await.unwrap();
            assert!(got.as_bytes().iter().all(|&b| b == 0x3c));
            let mut n = 0;
            while f.completes_in_call() {
                let got = f.read(1 << 20, 4096).await.unwrap();
                assert!(got.as_bytes().iter().all(|&b| b == 0x3c));
                n += 1;
                assert!(n <= 1024, "reads from the disk kept plain calls");
            }
            assert_eq!(f.in_call.backs(), 1);
            std::fs::remove_file(&path).unwrap();
        })
        .unwrap()
        .join()
        .unwrap();
}

/// Start `write` (or a read) of `buf` at `offset` and wait for its
/// call: `finish`'s verdict and the buffer.
async fn started(
    f: &FileBackend,
    write: bool,
    offset: u64,
    buf: DmaBuffer,
) -> (Option<io::Result<()>>, DmaBuffer) {
    let len = buf.len();
    let got = Rc::new(std::cell::RefCell::new(None));
    let put = got.clone();
    assert!(f.can_start(write));
    f.start(
        write,
        offset,
        buf,
        Box::new(move |r, b| *put.borrow_mut() = Some((r, b))),
    );
    let (r, b) = std::future::poll_fn(|cx| match got.borrow_mut().take() {
        Some(x) => std::task::Poll::Ready(x),
        None => {
            // Called by the reaper, a task of this executor.
            cx.waker().wake_by_ref();
            std::task::Poll::Pending
        }
    })
    .await;
    (f.finish(write, r, len), b)
}

/// A started write into a hole is refused by AIO (it would allocate)
/// and says so, to be done again through the ring; the next one waits
/// out the backoff; an overwrite and a read start and end there. A
/// read past the end of a file that shrank comes back short: refused,
/// and short again through the ring, an error.
#[test]
fn started_reads_and_writes_end_in_their_calls() {
    glommio::LocalExecutorBuilder::default()
        .spawn(|| async {
            let path = std::env::temp_dir().join(format!("file-start-{}", std::process::id()));
            create_sparse(&path, 1 << 20).unwrap();
            let f = FileBackend::open(&path, false).unwrap();
            let mut buf = crate::storage::dma_buffer(4096);
            buf.as_bytes_mut().fill(5);
            let (r, buf) = started(&f, true, 8192, buf).await;
            assert!(r.is_none(), "a write into a hole is refused");
            let (r, buf) = f.again(true, 8192, buf).await;
            r.unwrap();
            assert!(!f.can_start(true), "the next write skips AIO");
            f.write(8192, buf).await.unwrap();
            assert!(f.can_start(true), "the one after tries AIO");
            let mut buf = crate::storage::dma_buffer(4096);
            buf.as_bytes_mut().fill(6);
            let (r, _) = started(&f, true, 8192, buf).await;
            r.expect("an overwrite goes through AIO").unwrap();
            let (r, b) = started(&f, false, 8192, crate::storage::dma_buffer(4096)).await;
            r.expect("a read goes through AIO").unwrap();
            assert!(b.as_bytes().iter().all(|&x| x == 6));
            std::fs::OpenOptions::new()
                .write(true)
                .open(&path)
                .unwrap()
                .set_len(4096)
                .unwrap();
            let (r, b) = started(&f, false, 8192, crate::storage::dma_buffer(4096)).await;
            assert!(r.is_none(), "a short read is refused");
            let (r, _) = f.again(false, 8192, b).await;
            assert_eq!(r.unwrap_err().kind(), io::ErrorKind::UnexpectedEof);
            assert_eq!((f.reads.refusals(), f.writes.refusals()), (1, 1));
            std::fs::remove_file(&path).unwrap();
        })
        .unwrap()
        .join()
        .unwrap();
}

/// A sparse file goes through AIO without blocking: a write into a hole
/// (the file system would allocate, and `io_submit` block) is refused
/// there and goes through the ring; an overwrite and a read go through
/// AIO. Without the second way, the first write fails with EAGAIN.
#[test]
fn a_write_that_would_block_goes_through_the_ring() {
    glommio::LocalExecutorBuilder::default()
        .spawn(|| async {
            let path = std::env::temp_dir().join(format!("file-route-{}", std::process::id()));
            create_sparse(&path, 1 << 20).unwrap();
            let f = FileBackend::open(&path, false).unwrap();
            assert_eq!(f.route, Route::AioFirst, "ext4 takes RWF_NOWAIT");
            let mut buf = crate::storage::dma_buffer(4096);
            buf.as_bytes_mut().fill(7);
            f.write(65536, buf).await.unwrap();
            assert_eq!(
                f.writes.refusals(),
                1,
                "the hole's write was refused by AIO"
            );
            // The next write skips AIO (`Backoff`), the one after tries it.
            for fill in [8, 9] {
                let mut buf = crate::storage::dma_buffer(4096);
                buf.as_bytes_mut().fill(fill);
                f.write(65536, buf).await.unwrap();
            }
            let got = f.read(65536, 4096).await.unwrap();
            assert!(got.as_bytes().iter().all(|&b| b == 9));
            assert_eq!(f.writes.refusals(), 1, "an overwrite goes through AIO");
            assert_eq!(f.reads.refusals(), 0, "a read goes through AIO");
            let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
            assert!(maps.contains("[aio]"), "an AIO context serves the file");
            std::fs::remove_file(&path).unwrap();
        })
        .unwrap()
        .join()
        .unwrap();
}

/// A file's writes that came in one burst, given while another is in
/// flight, go to the kernel together (`write_submit`): fewer
/// `io_submit`s than writes, each write where it was asked to go. One
/// at a time, it would be 16.
#[test]
fn a_files_writes_are_gathered_while_others_are_in_flight() {
    glommio::LocalExecutorBuilder::default()
        .spawn(|| async {
            let path = std::env::temp_dir().join(format!("file-gather-{}", std::process::id()));
            // Overwrites, which AIO takes without blocking.
            cold_file(&path, 64);
            let f = FileBackend::open(&path, false).unwrap();
            let block = |fill: u8| {
                let mut b = crate::storage::dma_buffer(4096);
                b.as_bytes_mut().fill(fill);
                b
            };
            crate::storage::uring::burst_continues(true);
            let before = f.ring.aio_submits();
            // Each write started (polled once) before any is awaited.
            let mut going = Vec::new();
            for i in 1..=16u8 {
                let mut w = Box::pin(f.write(i as u64 * 4096, block(i)));
                match futures_lite::future::poll_once(&mut w).await {
                    Some(r) => r.unwrap(),
                    None => going.push(w),
                }
            }
            for w in going {
                w.await.unwrap();
            }
            let submits = f.ring.aio_submits() - before;
            assert!(submits <= 8, "{submits} io_submits for 16 writes");
            for i in 1..=16u8 {
                let got = f.read(i as u64 * 4096, 4096).await.unwrap();
                assert!(got.as_bytes().iter().all(|&b| b == i));
            }
            assert_eq!(f.writes.refusals(), 0, "all went through AIO");
            std::fs::remove_file(&path).unwrap();
        })
        .unwrap()
        .join()
        .unwrap();
}

/// A threaded block device's reads (`hand_over`: a loop device's), given
/// while others are in flight, wait for the reaper to look as its writes
/// do, burst or not (`read_submit`): fewer `io_submit`s than reads, each
/// read returning its own blocks. One at a time, it would be 16.
#[test]
fn a_threaded_devices_reads_are_gathered_while_others_are_in_flight() {
    glommio::LocalExecutorBuilder::default()
        .spawn(|| async {
            let path = std::env::temp_dir().join(format!("read-gather-{}", std::process::id()));
            cold_file(&path, 32);
            // A file stands in for the device: the rule is the backend's.
            let mut f = FileBackend::open(&path, false).unwrap();
            f.hand_over = true;
            crate::storage::uring::burst_continues(false);
            let before = f.ring.aio_submits();
            // All started in one round of the executor, before any is done.
            let f = std::rc::Rc::new(f);
            let going: Vec<_> = (1..=16u64)
                .map(|i| {
                    let f = f.clone();
                    glommio::spawn_local(async move { f.read(i * 4096, 4096).await })
                })
                .collect();
            for (i, r) in (1..=16u8).zip(going) {
                let got = r.await.unwrap();
                assert!(got.as_bytes().iter().all(|&b| b == i), "block {i}");
            }
            let submits = f.ring.aio_submits() - before;
            assert!(submits <= 8, "{submits} io_submits for 16 reads");
            assert_eq!(f.reads.refusals(), 0, "all went through AIO");
            std::fs::remove_file(&path).unwrap();
        })
        .unwrap()
        .join()
        .unwrap();
}

/// A file of `blocks` 4 KiB blocks, block `i` filled with byte `i`,
/// written to the disk and none of it in the page cache.
fn cold_file(path: &std::path::Path, blocks: u8) {
    let mut w = std::fs::File::create(path).unwrap();
    for i in 0..blocks {
        std::io::Write::write_all(&mut w, &[i; 4096]).unwrap();
    }
    w.sync_all().unwrap();
    // SAFETY: a plain call on a descriptor this test owns.
    let r = unsafe { libc::posix_fadvise(w.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    assert_eq!(r, 0);
}
