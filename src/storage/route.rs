//! Which way a file's or block device's reads and writes reach the kernel.
//!
//! - A block device whose driver cannot take I/O without blocking (zram)
//!   goes through Linux AIO: io_uring would hand each operation to a
//!   worker thread (`aio`'s module comment has the figures). One seen
//!   completing its reads inside `io_submit` is then served by plain
//!   calls (`in_call`).
//! - A file on a file system that can (ext4, XFS, btrfs), and a block
//!   device that can, try Linux AIO with `RWF_NOWAIT` first, and an
//!   operation the kernel refuses that way (a write that would allocate,
//!   or convert an unwritten extent; a full device queue) goes again
//!   through the ring, whose worker may block. io_uring needs no worker
//!   for these either, but it finishes each completion in this thread
//!   (task work), where AIO's is written into the mapped ring from the
//!   device's interrupt: from a QD1 read's block completion to its reply
//!   took 6.5-7.5 µs through the ring, 4.6-4.9 through AIO, 3.5 in SPDK
//!   (2 traced runs each). On ext4 over the virtio disk, against the ring
//!   alone (4 alternated pairs of 3 s): 4 KiB randread QD1 1.02, QD32
//!   1.01, randwrite QD32 1.06, QD8 1.02, 128 KiB reads QD8 1.03. On a
//!   loop device over that file (3 pairs), with a block device's writes
//!   gathered into one `io_submit` as into one `io_uring_enter`: randread
//!   QD32 1.05, QD1 1.03, randwrite QD32 1.10, QD8 1.01 (one `io_submit`
//!   per write: 0.75).
//! - Without `RWF_NOWAIT` AIO would block this core in `io_submit` for an
//!   allocating write, so a file on a file system that cannot promise
//!   not to block stays on the ring.

use std::cell::Cell;
use std::io;

/// How a backing's reads and writes reach the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// This core's io_uring.
    Ring,
    /// Linux AIO.
    Aio,
    /// Linux AIO with `RWF_NOWAIT`, then the ring for an operation that
    /// would have blocked.
    AioFirst,
}

impl Route {
    /// The route for a block device or a file, by whether it can take
    /// I/O without blocking (`file::takes_nowait`).
    pub fn of(is_block: bool, takes_nowait: bool) -> Route {
        match (is_block, takes_nowait) {
            (true, false) => Route::Aio,
            (_, true) => Route::AioFirst,
            (false, false) => Route::Ring,
        }
    }
}

/// An AIO attempt with `RWF_NOWAIT` that did not do all of its work
/// (refused, or stopped short at a point where it would block).
pub fn would_block(r: &io::Result<usize>, len: usize) -> bool {
    match r {
        Ok(n) => *n < len,
        Err(e) => matches!(e.raw_os_error(), Some(libc::EAGAIN | libc::EOPNOTSUPP)),
    }
}

/// The most operations that skip the AIO attempt after refusals.
pub const MAX_SKIP: u32 = 1024;

/// When to try AIO first. A refused attempt costs a system call and the
/// file system's checks on top of the ring's way; on a sparse file whose
/// writes all allocate, that made 4 KiB randwrite QD32 0.79-0.92 of the
/// ring alone (2 pairs), as the ring's workers share this core. So after
/// a refusal the next operations skip the attempt, twice as many after
/// each further refusal (up to `MAX_SKIP`), until one goes through.
#[derive(Debug, Default)]
pub struct Backoff {
    /// Operations still to skip the attempt.
    skip: Cell<u32>,
    /// How many skip after the next refusal, less one (0 after a success).
    streak: Cell<u32>,
    refusals: Cell<u64>,
}

impl Backoff {
    /// Whether this operation tries AIO first.
    pub fn try_aio(&self) -> bool {
        match self.skip.get() {
            0 => true,
            n => {
                self.skip.set(n - 1);
                false
            }
        }
    }

    /// Whether the next operation will try AIO (`try_aio` without
    /// counting one).
    pub fn will_try(&self) -> bool {
        self.skip.get() == 0
    }

    /// The attempt would have blocked.
    pub fn refused(&self) {
        self.refusals.set(self.refusals.get() + 1);
        let skip = (self.streak.get() * 2).clamp(1, MAX_SKIP);
        self.streak.set(skip);
        self.skip.set(skip);
    }

    /// The attempt did all of its work.
    pub fn went_through(&self) {
        self.streak.set(0);
    }

    /// Attempts refused so far.
    pub fn refusals(&self) -> u64 {
        self.refusals.get()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Attempts made in `n` operations when every attempt is refused.
    fn attempts(b: &Backoff, n: usize) -> usize {
        (0..n)
            .filter(|_| {
                let t = b.try_aio();
                if t {
                    b.refused();
                }
                t
            })
            .count()
    }

    #[test]
    fn refusals_space_the_attempts_out_and_a_success_resets() {
        let b = Backoff::default();
        // Attempts at operations 0, 2, 5, 10, 19, ... then one in
        // `MAX_SKIP + 1`.
        assert_eq!(attempts(&b, 20), 5);
        assert_eq!(b.refusals(), 5);
        let b = Backoff::default();
        let n = attempts(&b, 100_000);
        assert!(n <= 12 + 100_000 / MAX_SKIP as usize, "{n} attempts");
        // A success: the next refusal skips one operation only.
        while !b.try_aio() {}
        b.went_through();
        b.refused();
        assert!(!b.try_aio());
        assert!(b.try_aio());
    }

    #[test]
    fn routes() {
        assert_eq!(Route::of(true, false), Route::Aio);
        assert_eq!(Route::of(false, true), Route::AioFirst);
        assert_eq!(Route::of(true, true), Route::AioFirst);
        assert_eq!(Route::of(false, false), Route::Ring);
        let short: io::Result<usize> = Ok(512);
        assert!(would_block(&short, 4096));
        assert!(!would_block(&Ok(4096), 4096));
        assert!(would_block(
            &Err(io::Error::from_raw_os_error(libc::EAGAIN)),
            1
        ));
        assert!(!would_block(
            &Err(io::Error::from_raw_os_error(libc::EIO)),
            1
        ));
    }
}
