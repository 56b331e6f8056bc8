//! Per-block atomicity. Identify says one block is written atomically
//! (AWUN = 0: NVMe Base 2.0 §2.1.4.1): a read returns each block as it was
//! at one moment, never half one write and half another. Neither the RAM
//! disk (16-byte stores) nor O_DIRECT on a file (the device may split a
//! block) promises that against a concurrent command, so every command
//! that touches a namespace's blocks holds a lock on them for as long as
//! it reads or writes the backing: shared for reads, exclusive for writes.
//!
//! One lock table per namespace, shared by every core (a namespace is one
//! set of blocks whichever core serves it). Blocks map onto `STRIPES`
//! stripes, each a reader count and a writer bit in one 16-bit word; a
//! range takes its stripes in ascending order, so two commands can never
//! wait for each other. Holders never block while holding (they await the
//! backing, which completes on its own).
//!
//! The words are packed, 32 to a cache line, so that the table (32 KiB)
//! stays in the core's cache. With a cache line per stripe (256 KiB) a
//! random block's stripe was a cache miss nearly every time, as the data
//! streaming through the core evicted the table: 4% of the core's cycles
//! at zram 4 KiB randread QD32 sat on that one load, and packing measured
//! 1.04 of it (3 of 3 alternated pairs). Two cores can now share a line;
//! when they touch it at once, the line moves between them, which costs
//! about the miss every hold paid before.
//!
//! Conflicts are rare (random 4 KiB writes at QD32 meet a taken stripe
//! about once in 530 commands), so a command that finds its stripe taken
//! does not queue: it tries again when a hold on its core is released, or
//! after `RETRY` for a holder on another core. A timer alone is not enough:
//! a busy core looks at glommio's timers only at its preemption timer, and
//! when that was glommio's 100 ms, one such write in 130 waited up to
//! 100 ms (p99.9 66 ms, and the device saw 5 of the host's 32 commands).

use std::cell::{Cell, RefCell};
use std::future::poll_fn;
use std::rc::Rc;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::Arc;

/// Stripes per namespace: a power of two. Two blocks `STRIPES` apart share
/// a stripe (harmless: they merely wait for each other, but a write that
/// waits misses its burst's trip to the device and takes one more: with
/// 4096 stripes 0.8% of random 4 KiB writes at QD32 did, twice the
/// latency, and the p99 of ours was 1.05-1.11 of SPDK's, which has no such
/// lock).
pub const STRIPES: usize = 16384;
const WRITER: u16 = 1 << 15;
/// The most readers of one stripe at once; one more waits for a release.
const MAX_READERS: u16 = WRITER - 1;
/// How long a command waits before it looks at a stripe held by another
/// core again (one held on its own core is looked at on release).
const RETRY: std::time::Duration = std::time::Duration::from_micros(20);

struct Stripe(AtomicU16);

// Packed (see the module comment): the table must stay cache-sized.
const _: () = assert!(std::mem::size_of::<Stripe>() * STRIPES <= 32 * 1024);

pub struct BlockLocks {
    stripes: Box<[Stripe]>,
}

impl Default for BlockLocks {
    fn default() -> Self {
        BlockLocks {
            stripes: (0..STRIPES).map(|_| Stripe(AtomicU16::new(0))).collect(),
        }
    }
}

/// The stripes of blocks `first..first + count`, as at most two ascending
/// runs of stripe indexes.
fn runs(first: u64, count: u64) -> [std::ops::Range<usize>; 2] {
    if count >= STRIPES as u64 {
        return [0..STRIPES, 0..0];
    }
    let start = (first % STRIPES as u64) as usize;
    let end = start + count as usize;
    if end <= STRIPES {
        [start..end, 0..0]
    } else {
        // Wraps: the low run first, to keep the order ascending.
        [0..end - STRIPES, start..STRIPES]
    }
}

impl BlockLocks {
    fn try_take(&self, i: usize, exclusive: bool) -> bool {
        let s = &self.stripes[i].0;
        if exclusive {
            s.compare_exchange(0, WRITER, Ordering::Acquire, Ordering::Relaxed)
                .is_ok()
        } else {
            let v = s.load(Ordering::Relaxed);
            v & WRITER == 0
                && v < MAX_READERS
                && s.compare_exchange(v, v + 1, Ordering::Acquire, Ordering::Relaxed)
                    .is_ok()
        }
    }

    fn release(&self, i: usize, exclusive: bool) {
        let s = &self.stripes[i].0;
        if exclusive {
            let was = s.swap(0, Ordering::Release);
            assert_eq!(was, WRITER, "released a stripe not held exclusively");
        } else {
            let was = s.fetch_sub(1, Ordering::Release);
            assert!(
                was & !WRITER > 0 && was & WRITER == 0,
                "released a stripe not held shared"
            );
        }
    }
}

/// This core's handle on a namespace's table (an `Rc`, so that taking a
/// hold does not bounce a shared count between cores).
pub type LocksHandle = Rc<Arc<BlockLocks>>;

/// Hold blocks `first..first + count`: shared (reads) or exclusive
/// (writes), until the hold is dropped.
pub async fn hold(locks: &LocksHandle, first: u64, count: u64, exclusive: bool) -> BlockHold {
    let mut h = BlockHold::new(locks, first, count, exclusive);
    while !h.take_free() {
        // Not a yield: a holder on this core may be waiting for I/O that
        // glommio reaps only when no task is runnable.
        futures_lite::future::or(released_here(), glommio::timer::sleep(RETRY)).await;
        // Woken by a release, most often among a burst of completions
        // whose replies wait behind this task: they go first. Taking the
        // stripe and submitting at once held them back by the submission,
        // a doorbell to an idle device (17 µs a time, in 12% of the bursts
        // of random 4 KiB writes at QD32 on the file).
        futures_lite::future::yield_now().await;
    }
    h
}

/// Hold blocks `first..first + count` as `hold` does, if every stripe is
/// free now; `None` (nothing held) otherwise.
pub fn try_hold(locks: &LocksHandle, first: u64, count: u64, exclusive: bool) -> Option<BlockHold> {
    let mut h = BlockHold::new(locks, first, count, exclusive);
    // Dropped if not whole: releases the stripes taken so far.
    h.take_free().then_some(h)
}

thread_local! {
    /// Holds released on this thread (its executor's core) so far.
    static RELEASES: Cell<u64> = const { Cell::new(0) };
    /// Commands of this core waiting for a stripe, woken on any release.
    static WAITING: RefCell<Vec<std::task::Waker>> = const { RefCell::new(Vec::new()) };
}

/// Ready once a hold on this core has been released.
async fn released_here() {
    let seen = RELEASES.get();
    poll_fn(|cx| {
        if RELEASES.get() != seen {
            return std::task::Poll::Ready(());
        }
        // Once per task: one whose holder is on another core comes back
        // here after every `RETRY`.
        WAITING.with_borrow_mut(|w| {
            if !w.iter().any(|x| x.will_wake(cx.waker())) {
                w.push(cx.waker().clone());
            }
        });
        std::task::Poll::Pending
    })
    .await
}

/// Stripes held; released on drop (also when the command is dropped).
pub struct BlockHold {
    locks: LocksHandle,
    runs: [std::ops::Range<usize>; 2],
    exclusive: bool,
    /// How many of the stripes, in order, are taken.
    held: usize,
}

impl BlockHold {
    fn new(locks: &LocksHandle, first: u64, count: u64, exclusive: bool) -> BlockHold {
        BlockHold {
            locks: locks.clone(),
            runs: runs(first, count),
            exclusive,
            held: 0,
        }
    }

    /// Take the stripes not yet taken, in ascending order, while they are
    /// free: whether all of them are taken now.
    fn take_free(&mut self) -> bool {
        let order = self.runs.clone();
        for i in order.into_iter().flatten().skip(self.held) {
            if !self.locks.try_take(i, self.exclusive) {
                return false;
            }
            self.held += 1;
        }
        true
    }
}

impl Drop for BlockHold {
    fn drop(&mut self) {
        if self.held == 0 {
            // Nothing taken: nothing to release, nobody to wake.
            return;
        }
        let order = self.runs.iter().flat_map(|r| r.clone());
        for i in order.take(self.held) {
            self.locks.release(i, self.exclusive);
        }
        RELEASES.set(RELEASES.get().wrapping_add(1));
        // Rarely anyone: conflicts are rare. Woken ones try again.
        let waiting = WAITING.with_borrow_mut(std::mem::take);
        for w in waiting {
            w.wake();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Uncontended locks never wait, so no executor is needed.
    fn block_on<T>(f: impl std::future::Future<Output = T>) -> T {
        futures_lite::future::block_on(f)
    }

    #[test]
    fn stripe_runs_ascend_and_wrap() {
        assert_eq!(runs(5, 3), [5..8, 0..0]);
        assert_eq!(runs(STRIPES as u64 - 2, 4), [0..2, STRIPES - 2..STRIPES]);
        assert_eq!(runs(7, STRIPES as u64 + 9), [0..STRIPES, 0..0]);
        assert_eq!(runs(STRIPES as u64 * 3 + 1, 1), [1..2, 0..0]);
    }

    /// `try_hold` takes a range only whole: with one of its stripes taken
    /// it holds none of them (the others free for anyone), and it shares a
    /// stripe with readers as `hold` does.
    #[test]
    fn a_try_hold_takes_all_of_a_range_or_nothing() {
        let h: LocksHandle = Rc::new(Arc::default());
        let writer = block_on(hold(&h, 7, 1, true));
        assert!(try_hold(&h, 4, 4, false).is_none());
        assert!(try_hold(&h, 7, 1, true).is_none());
        let _lower = try_hold(&h, 4, 3, true).expect("blocks 4-6 were left free");
        drop(writer);
        let r1 = try_hold(&h, 7, 2, false).expect("free again");
        let _r2 = try_hold(&h, 8, 1, false).expect("readers share");
        assert!(try_hold(&h, 8, 1, true).is_none());
        drop(r1);
        assert!(try_hold(&h, 7, 1, true).is_some());
    }

    /// A command waiting for a stripe held on its own core gets it as soon
    /// as the holder lets go, even while other tasks keep the core busy (a
    /// busy core looks at glommio's timers only at its preemption timer).
    #[test]
    fn a_waiter_gets_the_stripe_when_its_core_releases_it_while_busy() {
        glommio::LocalExecutorBuilder::default()
            .spawn(|| async {
                let h: LocksHandle = Rc::new(Arc::default());
                let first = hold(&h, 5, 1, true).await;
                let rounds = Rc::new(Cell::new(0u32));
                let got_at = Rc::new(Cell::new(None));
                let waiter = glommio::spawn_local({
                    let (h, rounds, got_at) = (h.clone(), rounds.clone(), got_at.clone());
                    async move {
                        let _second = hold(&h, 5, 1, true).await;
                        got_at.set(Some(rounds.get()));
                    }
                });
                // A core busy with other work: a task that always runs again.
                let mut first = Some(first);
                while got_at.get().is_none() && rounds.get() < 1_000_000 {
                    if rounds.get() == 10 {
                        drop(first.take());
                    }
                    rounds.set(rounds.get() + 1);
                    futures_lite::future::yield_now().await;
                }
                waiter.await;
                let at = got_at.get().expect("the waiter never got the stripe");
                assert!(
                    at < 20,
                    "the waiter got the stripe {} rounds after its release",
                    at - 10
                );
            })
            .unwrap()
            .join()
            .unwrap();
    }

    /// A waiter woken by a release goes after what was woken right after it
    /// (the reply of the completion that released it, queued next): it
    /// would otherwise submit first and hold that reply back.
    #[test]
    fn a_woken_waiter_lets_the_task_woken_after_it_go_first() {
        glommio::LocalExecutorBuilder::default()
            .spawn(|| async {
                let h: LocksHandle = Rc::new(Arc::default());
                let first = hold(&h, 5, 1, true).await;
                let log = Rc::new(RefCell::new(Vec::new()));
                let reply = Rc::new(crate::trigger::Trigger::new());
                let waiter = glommio::spawn_local({
                    let (h, log) = (h.clone(), log.clone());
                    async move {
                        let _second = hold(&h, 5, 1, true).await;
                        log.borrow_mut().push("waiter");
                    }
                });
                let replier = glommio::spawn_local({
                    let (log, reply) = (log.clone(), reply.clone());
                    async move {
                        reply.wait().await;
                        log.borrow_mut().push("reply");
                    }
                });
                futures_lite::future::yield_now().await;
                drop(first);
                reply.fire();
                waiter.await;
                replier.await;
                assert_eq!(*log.borrow(), ["reply", "waiter"]);
            })
            .unwrap()
            .join()
            .unwrap();
    }

    /// A command waiting for a stripe held on another core looks again
    /// every `RETRY`, and is still listed once among this core's waiters.
    #[test]
    fn a_waiter_for_another_core_is_listed_once() {
        glommio::LocalExecutorBuilder::default()
            .spawn(|| async {
                let h: LocksHandle = Rc::new(Arc::default());
                // Taken as another core takes it: no release here wakes anyone.
                assert!(h.try_take(7, true));
                let waiter = glommio::spawn_local({
                    let h = h.clone();
                    async move {
                        hold(&h, 7, 1, true).await;
                    }
                });
                glommio::timer::sleep(RETRY * 100).await;
                assert_eq!(WAITING.with_borrow(|w| w.len()), 1);
                h.release(7, true);
                waiter.await;
            })
            .unwrap()
            .join()
            .unwrap();
    }

    #[test]
    fn a_stripe_takes_at_most_max_readers() {
        let l = BlockLocks::default();
        for _ in 0..MAX_READERS {
            assert!(l.try_take(7, false));
        }
        // One more would reach the writer bit: it waits for a release.
        assert!(!l.try_take(7, false), "a stripe's reader count overflowed");
        assert!(!l.try_take(7, true));
        l.release(7, false);
        assert!(l.try_take(7, false));
        for _ in 0..MAX_READERS {
            l.release(7, false);
        }
        assert_eq!(l.stripes[7].0.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn readers_share_and_writers_exclude() {
        let h: LocksHandle = Rc::new(Arc::default());
        let l = &**h;
        let r1 = block_on(hold(&h, 10, 2, false));
        let r2 = block_on(hold(&h, 11, 1, false));
        assert!(!l.try_take(11, true), "a writer got a block being read");
        drop((r1, r2));
        let w = block_on(hold(&h, 10, 4, true));
        assert!(!l.try_take(12, false), "a reader got a block being written");
        assert!(!l.try_take(13, true), "two writers on one block");
        assert!(l.try_take(14, true));
        l.release(14, true);
        drop(w);
        for i in 0..STRIPES {
            assert_eq!(l.stripes[i].0.load(Ordering::Relaxed), 0);
        }
    }
}
