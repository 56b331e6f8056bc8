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

/// Idle rounds between looks at the switch count (one light system call).
pub const CHECK_EVERY: u32 = 64;
/// Looks without a new switch after which the CPU counts as the poller's
/// own again. Short: while a thread really shares the CPU, each yield that
/// serves it moves the count again; alone, a kernel thread's occasional
/// preemption (tens a second here) should not start a long run of yields.
const HOLD_CHECKS: u32 = 4;

/// What the poller knows about its CPU's other takers.
#[derive(Debug)]
pub struct CpuShare {
    /// Involuntary switches seen at the last look (`None` before the first).
    switches: Option<i64>,
    /// Looks left during which the CPU counts as shared.
    shared_for: u32,
}

impl CpuShare {
    /// Shared at first: yielding costs a little, starving a host sharing the
    /// CPU costs a time slice.
    pub fn new() -> Self {
        CpuShare {
            switches: None,
            shared_for: HOLD_CHECKS,
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
