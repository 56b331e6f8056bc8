//! Handing the CPU to the thread a block device's reads and writes woke.
//!
//! Some block devices do their work in a kernel thread that the submission
//! wakes (a loop device's worker; dm-crypt's and md's are others). Woken
//! on this core's CPU, it may wait there until the core's next tick (4 ms
//! at HZ=250): the core polls and never sleeps while I/O is in flight, and
//! the operations the thread carries wait with it, and every command
//! queued behind them. A `sched_yield` once they went lets it run at once.
//!
//! Measured with `spdk_nvme_perf` on the other CPU, 4 alternated rounds of
//! 4 s each against no yield, 4 KiB random writes (2026-12-07):
//! - a loop device over a tmpfs file (the worker's work only, no disk):
//!   QD32 1.46 of the IOPS (1.33-1.66) with p99 0.50, QD8 1.47 (1.04-1.52)
//!   with p99 0.31;
//! - a loop device over the disk file: QD32 1.09 (0.97-1.60) with p99
//!   0.84, QD8 1.12 with p99 0.67, QD1 1.09 with p99 0.52.
//!
//! Where the yield goes matters. Right after the submission, before its
//! completions are taken, it measured 0.77 of this at QD32 on the tmpfs
//! loop device. Spaced out while yields seemed to find nobody (timed: one
//! over 2 or 8 µs ran another thread; that was 20-36% of them on the loop
//! devices) it kept most of the IOPS but not the tail: QD8 p99 3.8-4.7
//! times that of a yield every time. (A yield also moves this thread's
//! deadline on by a slice, `yield_task_fair`, so that a thread woken later
//! may preempt it sooner: a likely reason, not measured.)
//!
//! Reads: a yield right after each read submission had cost them 14-29%;
//! placed as above, against writes alone yielding, 4 KiB random reads on
//! the loop device over the disk file QD32 1.15 and 1.15 (4 and 6 rounds,
//! p99 0.63 and 0.53), QD1 0.91, 0.99, 0.99 (4, 6, 8 rounds); over tmpfs
//! QD32 0.98 and 0.99, QD8 1.28 (6 rounds, p99 0.13), QD1 1.13, 0.88, 1.07.
//! Since 2026-12-08 a threaded device's reads also gather as its writes
//! do (`Submit::GatherHandOver`): each call wakes the worker once, and a
//! file's reads (no thread) measured the same either way. On the loop
//! device over the disk file, against reads going one at a time (4
//! alternated rounds of 4 s): QD32 1.235 (1.05-1.46, p99 0.64), QD8 1.211
//! (1.15-1.27, p99 0.66), 128 KiB QD8 1.189; QD1 (never gathers) 0.960
//! over 4 rounds and 1.031 over 8. That put its QD32 reads at 1.29 of
//! bare fio's io_uring on the same device, where they had trailed it.
//!
//! A device that completes I/O in the submitting call (zram: a copy)
//! has no thread to run, and each yield is a system call (0.56 µs here):
//! yielding after every write, zram's QD32 writes fell to 0.82. So the
//! core yields only while operations are still in the kernel once the
//! submission's completions were taken: zram then measured 1.08 at QD32
//! and QD8 (0.74-1.42). A drive that takes a submission without a thread
//! (NVMe, SCSI, virtio) would still pay one yield per submission: forced
//! on a file on the virtio disk it cost 3-7% (`storage::threaded`, which
//! decides which devices yield).

use super::{Ring, Submit};

impl Ring {
    /// An operation to go as `how` was queued.
    pub(super) fn note_hand_over(&self, how: Submit) {
        if how.hands_over() {
            self.to_hand_over.set(true);
        }
    }

    /// Operations went to the kernel: were any that hand over among them?
    pub(super) fn went_to_kernel(&self) {
        if self.to_hand_over.replace(false) {
            self.handing_over.set(true);
        }
    }

    /// After the completions that came with a submission were taken: if
    /// operations that hand over went and some are still in the kernel,
    /// yield the CPU.
    pub(super) fn hand_over(&self) {
        if self.handing_over.replace(false) && self.in_kernel.get() > 0 {
            self.handovers.set(self.handovers.get() + 1);
            // SAFETY: plain system call.
            unsafe { libc::sched_yield() };
        }
    }
}
