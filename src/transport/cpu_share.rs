//! Whether another thread wants this core's CPU, so that a polling loop
//! hands it over only then.
//!
//! A poller that never blocks keeps a thread sharing its CPU (a host
//! polling on the same machine) waiting for the scheduler's time slice:
//! `sched_yield` every few idle rounds fixed that (perf/scaling.sh, client
//! and target on both CPUs: 206-450k against 870-980k IOPS). Alone on its
//! CPU, though, each yield is a trip through the scheduler for nothing, six
//! per read while a file read waits on the disk: 4 KiB randread QD1 on a file
//! measured 13% faster with none (6 of 6 alternated pairs), and 9.7% faster
//! (6 of 6) yielding only as below, where 0.14 yields per read are left.
//!
//! The thread's involuntary context switches (`getrusage(RUSAGE_THREAD)`)
//! count exactly the times it was switched out while still runnable:
//! preempted for another thread, or a `sched_yield` that handed the CPU
//! over. So the poller yields only while that count has moved lately. Alone,
//! it never moves; a thread that starts competing preempts the poller within
//! a time slice, and from then on every yield that serves it keeps the
//! yields going.
//!
//! A kernel thread that serves this core's own I/O moves the count too: a
//! file's write completions run in a dio kworker on this CPU, which
//! preempts the poller thousands of times a second and is back asleep
//! within microseconds. The count then says "shared" all the time, and
//! the yields it brings are worse than useless: a `sched_yield` that finds
//! nobody else to run picks the poller again with a fresh time slice, and
//! the scheduler (EEVDF's run-to-parity) lets no waking thread preempt a
//! task before its slice is used up. The kworker then waited 0.9-3 ms,
//! 11-22 times a second, and every write in flight with it: at 4 KiB
//! randwrite QD32 on a file 1% of the writes took 1.3 ms, p99 1.31-1.33 ms
//! against SPDK's 0.68-0.74 (its poller never yields), and 0.79-0.90 ms
//! without the yields. So a yield must also hand the CPU over to earn the
//! next: one that comes back within `HANDED_OVER` (nobody ran, or a
//! kernel thread for a moment) defers the next yield by `MIN_DEFER`,
//! doubling up to `MAX_DEFER`; one that does hand it over (a polling host
//! runs until the scheduler takes the CPU back) restores them.

use std::time::{Duration, Instant};

/// Idle rounds between looks at the switch count (one light system call).
pub const CHECK_EVERY: u32 = 64;
/// Looks without a new switch after which the CPU counts as the poller's
/// own again. Short: while a thread really shares the CPU, each yield that
/// serves it moves the count again; alone, a kernel thread's occasional
/// preemption (tens a second here) should not start a long run of yields.
const HOLD_CHECKS: u32 = 4;

/// A yield that kept the poller off its CPU this long handed it over to a
/// thread that wanted it: far above a kworker's run and a futile yield's
/// return (microseconds), far below a time slice (0.75 ms and up).
const HANDED_OVER: Duration = Duration::from_micros(50);
/// How long the first yield that handed nothing over defers the next.
const MIN_DEFER: Duration = Duration::from_millis(1);
/// The longest deferral: a polling host that starts sharing the CPU waits
/// for the scheduler's time slices at most this long before the yields
/// serve it again.
const MAX_DEFER: Duration = Duration::from_secs(1);

/// What the poller knows about its CPU's other takers.
#[derive(Debug)]
pub struct CpuShare {
    /// Involuntary switches seen at the last look (`None` before the first).
    switches: Option<i64>,
    /// Looks left during which the CPU counts as shared.
    shared_for: u32,
    /// No yield before this (after yields that handed nothing over).
    defer_until: Option<Instant>,
    /// The deferral after the next yield that hands nothing over.
    defer: Duration,
}

impl CpuShare {
    /// Shared at first: yielding costs a little, starving a host sharing the
    /// CPU costs a time slice.
    pub fn new() -> Self {
        CpuShare {
            switches: None,
            shared_for: HOLD_CHECKS,
            defer_until: None,
            defer: MIN_DEFER,
        }
    }

    /// Whether to yield now: the CPU counts as shared and no futile yield
    /// defers it.
    pub fn may_yield(&self, now: Instant) -> bool {
        self.shared() && self.defer_until.is_none_or(|t| now >= t)
    }

    /// A yield made at `at` kept the poller off the CPU for `took`.
    pub fn yielded(&mut self, at: Instant, took: Duration) {
        if took >= HANDED_OVER {
            (self.defer_until, self.defer) = (None, MIN_DEFER);
        } else {
            self.defer_until = Some(at + took + self.defer);
            self.defer = (self.defer * 2).min(MAX_DEFER);
        }
    }

    /// Look at this thread's switch count; `shared` then says whether to
    /// yield when idle.
    pub fn check(&mut self) {
        self.observe(involuntary_switches());
    }

    /// The decision for a given switch count (`None`: it could not be read,
    /// so assume sharing).
    pub fn observe(&mut self, switches: Option<i64>) -> bool {
        let moved = match (switches, self.switches) {
            (Some(now), Some(before)) => now != before,
            _ => true,
        };
        self.switches = switches;
        if moved {
            self.shared_for = HOLD_CHECKS;
        } else {
            self.shared_for = self.shared_for.saturating_sub(1);
        }
        self.shared()
    }

    /// Whether the CPU counted as shared at the last look.
    pub fn shared(&self) -> bool {
        self.shared_for > 0
    }
}

/// This thread's involuntary context switches so far.
fn involuntary_switches() -> Option<i64> {
    // SAFETY: an all-zero rusage is valid; getrusage writes into it.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: plain system call on a valid pointer.
    let r = unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut ru) };
    (r == 0).then_some(ru.ru_nivcsw as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yields_that_hand_nothing_over_space_out_until_one_does() {
        let mut s = CpuShare::new();
        let t0 = Instant::now();
        assert!(s.may_yield(t0), "shared at first, nothing deferred");
        let short = Duration::from_micros(3);
        s.yielded(t0, short);
        assert!(!s.may_yield(t0 + short + MIN_DEFER / 2));
        let t1 = t0 + short + MIN_DEFER;
        assert!(s.may_yield(t1));
        s.yielded(t1, short);
        assert!(!s.may_yield(t1 + short + MIN_DEFER), "the deferral doubled");
        assert!(s.may_yield(t1 + short + 2 * MIN_DEFER));
        for _ in 0..20 {
            s.yielded(t1, short);
        }
        assert!(!s.may_yield(t1 + short + MAX_DEFER / 2));
        assert!(s.may_yield(t1 + short + MAX_DEFER), "capped at MAX_DEFER");
        // A yield that hands the CPU over: the next is due at once again.
        let t2 = t1 + 2 * MAX_DEFER;
        s.yielded(t2, HANDED_OVER);
        assert!(s.may_yield(t2));
        s.yielded(t2, short);
        assert!(s.may_yield(t2 + short + MIN_DEFER), "back to MIN_DEFER");
    }

    #[test]
    fn nothing_yields_while_the_cpu_is_the_pollers() {
        let mut s = CpuShare::new();
        for _ in 0..=HOLD_CHECKS {
            s.observe(Some(1));
        }
        assert!(!s.may_yield(Instant::now()));
    }

    #[test]
    fn shared_until_the_count_stays_still_for_the_hold() {
        let mut s = CpuShare::new();
        assert!(s.observe(Some(5)), "first look: no history");
        for i in 1..HOLD_CHECKS {
            assert!(s.observe(Some(5)), "look {i} is within the hold");
        }
        assert!(!s.observe(Some(5)), "a whole hold without a switch");
        assert!(!s.observe(Some(5)));
        assert!(s.observe(Some(6)), "a new switch: shared again");
        assert!(s.observe(Some(6)));
    }

    #[test]
    fn an_unreadable_count_counts_as_shared() {
        let mut s = CpuShare::new();
        for _ in 0..2 * HOLD_CHECKS {
            s.observe(Some(1));
        }
        assert!(!s.shared());
        assert!(s.observe(None));
    }

    /// The real count moves when another thread takes this thread's CPU.
    #[test]
    fn a_thread_competing_for_the_cpu_is_seen() {
        let cpu = 0;
        let pin = move || {
            // SAFETY: a zeroed cpu_set_t is valid; CPU_SET writes a bit of it.
            let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
            // SAFETY: `cpu` is below CPU_SETSIZE.
            unsafe { libc::CPU_SET(cpu, &mut set) };
            // SAFETY: plain system call on a valid set.
            let r = unsafe { libc::sched_setaffinity(0, std::mem::size_of_val(&set), &set) };
            assert_eq!(r, 0, "pin to CPU {cpu}");
        };
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let spinner = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                pin();
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    std::hint::spin_loop();
                }
            })
        };
        let seen = std::thread::spawn(move || {
            pin();
            let before = involuntary_switches().expect("getrusage");
            let t = std::time::Instant::now();
            while t.elapsed() < std::time::Duration::from_secs(5) {
                // Busy, as a poller is: only the scheduler takes the CPU.
                if involuntary_switches().expect("getrusage") > before {
                    return true;
                }
                // SAFETY: plain system call.
                unsafe { libc::sched_yield() };
            }
            false
        })
        .join()
        .unwrap();
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        spinner.join().unwrap();
        assert!(
            seen,
            "no involuntary switch in 5 s beside a spinning thread"
        );
    }
}
