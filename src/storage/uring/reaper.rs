//! The ring's reaper: the task that submits what waits and completes what
//! the kernel finished while anything is in flight, and sleeps when I/O is
//! slow (the module comment of `uring` says why and how long).

use super::{Ring, CLOCK_EVERY, MAX_BACKOFF, MIN_BACKOFF};
use glommio::io::BufferedFile;
use io_uring::IoUring;
use std::future::poll_fn;
use std::io;
use std::os::fd::FromRawFd;
use std::rc::Rc;
use std::task::Poll;
use std::time::{Duration, Instant};

/// An eventfd registered for `ring`'s completions, disabled until the
/// reaper sleeps (a signal per completion costs a wake-up while it polls).
pub(super) fn completion_signal(ring: &IoUring) -> Option<BufferedFile> {
    // Blocking: io_uring then waits for it to become readable rather than
    // failing the read with EAGAIN.
    // SAFETY: plain system call; the descriptor is checked.
    let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
    if fd < 0 {
        log::warn!("eventfd: {}", io::Error::last_os_error());
        return None;
    }
    // SAFETY: `fd` is ours and open; glommio closes it.
    let file = unsafe { BufferedFile::from_raw_fd(fd) };
    if let Err(e) = ring.submitter().register_eventfd(fd) {
        log::warn!("io_uring completion eventfd: {e}; slow I/O is looked at on timers");
        return None;
    }
    // SAFETY: the flags word is in the ring's shared memory, valid while
    // the ring is; only this thread touches the queue.
    unsafe { ring.completion_shared() }.disable_eventfd();
    Some(file)
}

/// Sleep until the kernel posts a completion or `nap` passes (the timer
/// covers a signal that could not wake the executor: glommio looks at its
/// ring only when no task is runnable); at once if a completion is there.
async fn sleep_until_completion(ring: &Ring, signal: &BufferedFile, nap: Duration) {
    let enable = |on: bool| {
        let mut r = ring.ring.borrow_mut();
        let cq = r.completion();
        if on {
            cq.enable_eventfd()
        } else {
            cq.disable_eventfd()
        }
    };
    enable(true);
    // The flag must be visible before the queue is looked at: a completion
    // posted before it raised no signal and is seen here.
    std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
    if ring.drive() == 0 {
        let signalled = futures_lite::future::or(
            async {
                let _ = signal.read_at(0, 8).await;
                true
            },
            async {
                glommio::timer::sleep(nap).await;
                false
            },
        )
        .await;
        if signalled {
            ring.signalled.set(ring.signalled.get() + 1);
        }
    }
    enable(false);
}

/// The ring's driver: one task per executor, alive while I/O is in flight.
pub(super) async fn reap(ring: Rc<Ring>) {
    // The clock is read once in a few rounds (as the socket poller does).
    let mut rounds = 0u32;
    let mut mark = (ring.events.get(), Instant::now());
    loop {
        if ring.pending() == 0 {
            // Nothing in flight: sleep until an operation is queued.
            poll_fn(|cx| {
                if ring.pending() > 0 {
                    return Poll::Ready(());
                }
                *ring.reaper.borrow_mut() = Some(cx.waker().clone());
                Poll::Pending
            })
            .await;
            mark = (ring.events.get(), Instant::now());
            continue;
        }
        ring.drive();
        rounds = rounds.wrapping_add(1);
        if !rounds.is_multiple_of(CLOCK_EVERY) {
            futures_lite::future::yield_now().await;
            continue;
        }
        let now = Instant::now();
        if ring.events.get() != mark.0 {
            mark = (ring.events.get(), now);
        }
        let quiet = now.duration_since(mark.1);
        if quiet < ring.window.get() {
            // Let the other tasks run, then look again.
            futures_lite::future::yield_now().await;
        } else {
            // Slow I/O: let the executor sleep until a completion, or at
            // most an eighth of the time it has been waiting.
            let nap = (quiet / 8).clamp(MIN_BACKOFF, MAX_BACKOFF);
            ring.napping.set(true);
            match &ring.signal {
                Some(signal) => sleep_until_completion(&ring, signal, nap).await,
                None => glommio::timer::sleep(nap).await,
            }
            ring.napping.set(false);
        }
    }
}
