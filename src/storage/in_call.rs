//! Reads as plain system calls, for a device that does all of its work
//! inside the call that submits it.
//!
//! A bio-based device that keeps its blocks in memory (zram, brd) copies,
//! and decompresses, in the submitting thread: its AIO completion is
//! already posted when `io_submit` returns (`uring::via_aio` reaps it
//! there). The AIO round around that copy (the iocb, the completion event
//! and its eventfd signal, the command's own task) is then pure cost. zram
//! 4 KiB randread, 4 alternated rounds of 4 s against AIO: QD32 1.15
//! (1.10-1.19; SPDK's AIO bdev 1.11 of AIO), QD1 1.02 (SPDK 1.03); with
//! random data in the device, QD32 1.11 (SPDK 1.11), QD1 1.03 (SPDK 1.02)
//! (perf/README.md).
//!
//! Writes keep AIO, run where the command is parsed (the submission
//! completes them there all the same): a write can be held in the device
//! (an I/O limit of the target's cgroup, a zram device's writeback), where
//! `io_submit` returns at once and a plain call would stop the core.
//!
//! Whether a device works that way is seen, never assumed: a backing on the
//! AIO route (`route::Route::Aio`) goes to plain calls once its last
//! `needed` reads through AIO all completed inside `io_submit`. It goes back
//! to AIO when a plain call takes longer than a copy would (`slow`: a zram
//! page written back to its backing disk, a thin volume's first read of a
//! provisioned block), or when one read in `RECHECK`, still sent through
//! AIO to look, does not complete in the call; each return doubles the
//! streak needed to come back, up to `MAX_NEEDED`. So a device that waits
//! now and then (a read limit of the target's cgroup) costs the core a few
//! waits each time it earns plain calls again.

use std::cell::Cell;
use std::io;
use std::os::fd::RawFd;
use std::time::Duration;

/// Reads through AIO, all completed in the call, before plain calls.
const FIRST_NEEDED: u32 = 1024;
/// The most a backing that went back to AIO must show again.
const MAX_NEEDED: u32 = 1 << 16;
/// In plain calls, one read in this many still goes through AIO, to see
/// that the device still completes in the call.
const RECHECK: u32 = 256;
/// A plain call longer than this (plus `SLOW_PER_BLOCK` for each 4 KiB)
/// waited for something: a zram 4 KiB read is 0.5-3 µs of the core here,
/// 128 KiB ~70 µs; a disk read is 50 µs or more.
const SLOW_BASE: Duration = Duration::from_micros(20);
const SLOW_PER_BLOCK: Duration = Duration::from_micros(3);
/// A single slow call is no proof: an interrupt or the hypervisor can
/// stop any call (zram 4 KiB `pread`s here, fio: p99.99 36 µs, p99.999
/// 83 µs, median 0.5 µs). Each slow call adds `SLOW_WEIGHT` to a score
/// that every other call lowers by one; past `SLOW_SCORE` (three slow
/// calls within a few dozen) the device is waited for.
const SLOW_WEIGHT: u32 = 8;
const SLOW_SCORE: u32 = 2 * SLOW_WEIGHT;

/// What a backing's recent I/O says about its device (one per core's
/// handle: each core sees its own calls).
pub struct InCall {
    on: Cell<bool>,
    /// Reads through AIO that completed in the call, in a row.
    streak: Cell<u32>,
    needed: Cell<u32>,
    /// Plain-call reads since the last AIO check.
    since_check: Cell<u32>,
    /// Recent slow calls (`SLOW_WEIGHT`).
    slow_score: Cell<u32>,
    /// Times it went back to AIO.
    backs: Cell<u64>,
}

impl Default for InCall {
    fn default() -> Self {
        InCall {
            on: Cell::new(false),
            streak: Cell::new(0),
            needed: Cell::new(FIRST_NEEDED),
            since_check: Cell::new(0),
            slow_score: Cell::new(0),
            backs: Cell::new(0),
        }
    }
}

/// How a read goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadWay {
    Call,
    Aio,
}

impl InCall {
    /// Reads go as plain calls now.
    pub fn on(&self) -> bool {
        self.on.get()
    }

    /// How the next read goes.
    pub fn read_way(&self) -> ReadWay {
        if !self.on.get() {
            return ReadWay::Aio;
        }
        let n = self.since_check.get() + 1;
        if n >= RECHECK {
            self.since_check.set(0);
            ReadWay::Aio
        } else {
            self.since_check.set(n);
            ReadWay::Call
        }
    }

    /// A read through AIO completed inside `io_submit`, or not.
    pub fn aio_read(&self, in_call: bool) {
        if !in_call {
            self.streak.set(0);
            if self.on.get() {
                self.back_to_aio("a read did not complete in its call");
            }
            return;
        }
        let s = self.streak.get().saturating_add(1);
        self.streak.set(s);
        if !self.on.get() && s >= self.needed.get() {
            self.on.set(true);
            self.since_check.set(0);
            log::debug!("{s} reads completed in their call: plain calls from now");
        }
    }

    /// A plain call of `len` bytes took `took`.
    pub fn call_took(&self, took: Duration, len: usize) {
        if !self.on.get() {
            return;
        }
        let score = self.slow_score.get();
        if took <= slow(len) {
            self.slow_score.set(score.saturating_sub(1));
            return;
        }
        let score = score + SLOW_WEIGHT;
        if score > SLOW_SCORE {
            self.back_to_aio("calls waited for the device");
        } else {
            self.slow_score.set(score);
        }
    }

    fn back_to_aio(&self, why: &str) {
        self.on.set(false);
        self.streak.set(0);
        self.slow_score.set(0);
        self.needed
            .set(self.needed.get().saturating_mul(2).min(MAX_NEEDED));
        self.backs.set(self.backs.get() + 1);
        log::debug!("back to AIO: {why}");
    }

    /// Times the backing went back to AIO.
    pub fn backs(&self) -> u64 {
        self.backs.get()
    }
}

fn slow(len: usize) -> Duration {
    SLOW_BASE + SLOW_PER_BLOCK * len.div_ceil(4096) as u32
}

/// pread(2) of all of `buf` at `offset` (O_DIRECT: aligned memory).
pub fn read(fd: RawFd, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    loop {
        // SAFETY: `buf` is ours and writable for its length.
        let r = unsafe { libc::pread(fd, buf.as_mut_ptr().cast(), buf.len(), offset as i64) };
        if r >= 0 {
            return Ok(r as usize);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn promote(c: &InCall) {
        for _ in 0..c.needed.get() {
            assert!(!c.on());
            assert_eq!(c.read_way(), ReadWay::Aio);
            c.aio_read(true);
        }
        assert!(c.on());
    }

    #[test]
    fn plain_calls_only_after_a_streak_of_reads_done_in_their_call() {
        let c = InCall::default();
        for _ in 0..FIRST_NEEDED - 1 {
            c.aio_read(true);
        }
        c.aio_read(false);
        assert!(!c.on(), "one read that waited restarts the streak");
        promote(&c);
    }

    #[test]
    fn a_slow_call_goes_back_to_aio_and_doubles_the_streak_needed() {
        let c = InCall::default();
        promote(&c);
        c.call_took(Duration::from_micros(10), 4096);
        assert!(c.on(), "a copy's time");
        c.call_took(Duration::from_micros(80), 128 * 1024);
        assert!(c.on(), "128 KiB of copying");
        // An interrupted call now and then is not a waiting device.
        for _ in 0..100 {
            c.call_took(Duration::from_micros(60), 4096);
            for _ in 0..SLOW_WEIGHT {
                c.call_took(Duration::from_micros(2), 4096);
            }
        }
        assert!(c.on(), "one slow call in nine");
        c.call_took(Duration::from_micros(60), 4096);
        c.call_took(Duration::from_micros(60), 4096);
        assert!(c.on());
        c.call_took(Duration::from_micros(60), 4096);
        assert!(
            !c.on(),
            "three 4 KiB calls of 60 µs in a row waited for a device"
        );
        assert_eq!(c.backs(), 1);
        assert_eq!(c.needed.get(), 2 * FIRST_NEEDED);
        promote(&c);
        for _ in 0..10 {
            for _ in 0..3 {
                c.call_took(Duration::from_millis(1), 4096);
            }
            promote(&c);
        }
        assert_eq!(c.needed.get(), MAX_NEEDED, "bounded");
    }

    #[test]
    fn plain_calls_still_check_through_aio_now_and_then() {
        let c = InCall::default();
        promote(&c);
        let aio = (0..10 * RECHECK)
            .filter(|_| c.read_way() == ReadWay::Aio)
            .count();
        assert_eq!(aio, 10);
        assert_eq!(c.read_way(), ReadWay::Call);
        c.aio_read(true);
        assert!(c.on());
        c.aio_read(false);
        assert!(!c.on(), "the check saw the device wait");
        assert_eq!(c.read_way(), ReadWay::Aio);
    }

    #[test]
    fn calls_move_the_data() {
        use std::os::fd::AsRawFd;
        use std::os::unix::fs::{FileExt, OpenOptionsExt};
        let path = std::env::temp_dir().join(format!("in-call-{}", std::process::id()));
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .custom_flags(libc::O_DIRECT)
            .open(&path)
            .unwrap();
        f.set_len(1 << 16).unwrap();
        let mut mem = super::super::file::AlignedBuf::new(8192);
        let buf = mem.bytes_mut();
        buf.fill(0x5a);
        f.write_all_at(buf, 4096).unwrap();
        buf.fill(0);
        assert_eq!(read(f.as_raw_fd(), buf, 4096).unwrap(), 8192);
        assert!(buf.iter().all(|&b| b == 0x5a));
        assert_eq!(
            read(f.as_raw_fd(), buf, 1 << 16).unwrap(),
            0,
            "past the end"
        );
        let bad = -1;
        assert!(read(bad, buf, 0).is_err());
        std::fs::remove_file(&path).unwrap();
    }
}
