//! What the perf tool asks the operating system: which CPUs it may use, its
//! own CPU time (getrusage) and another process's (/proc/PID/stat).

use std::time::Duration;

pub use crate::cpus::{allowed_cpus, parse_cpu_list};

/// User plus system CPU time of this whole process (every thread) so far.
pub fn self_cpu_time() -> Duration {
    // SAFETY: rusage is plain data that getrusage fills.
    let ru = unsafe {
        let mut ru: libc::rusage = std::mem::zeroed();
        if libc::getrusage(libc::RUSAGE_SELF, &mut ru) != 0 {
            return Duration::ZERO;
        }
        ru
    };
    let tv = |t: libc::timeval| {
        Duration::from_secs(t.tv_sec.max(0) as u64) + Duration::from_micros(t.tv_usec.max(0) as u64)
    };
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// User plus system CPU time of process `pid` (all its threads) from
/// /proc/PID/stat, at clock-tick resolution (usually 10 ms).
pub fn proc_cpu_time(pid: u32) -> Result<Duration, String> {
    let path = format!("/proc/{pid}/stat");
    let s = std::fs::read_to_string(&path).map_err(|e| format!("{path}: {e}"))?;
    // The command name (field 2) may hold spaces and parentheses: fields
    // are counted from the last ')'. utime and stime are fields 14 and 15.
    let rest = s
        .rfind(')')
        .map(|i| &s[i + 1..])
        .ok_or_else(|| format!("{path}: unexpected format"))?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize| -> Result<u64, String> {
        f.get(n - 3)
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| format!("{path}: no field {n}"))
    };
    let ticks = field(14)? + field(15)?;
    // SAFETY: sysconf has no memory effects.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let hz = if hz > 0 { hz as u64 } else { 100 };
    Ok(Duration::from_nanos(
        ticks.saturating_mul(1_000_000_000) / hz,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Both clocks see CPU this process burns: about 200 ms of spinning
    /// shows up in getrusage and, at tick resolution, in /proc/PID/stat.
    #[test]
    fn own_cpu_time_is_readable() {
        let pid = std::process::id();
        let (self0, proc0) = (self_cpu_time(), proc_cpu_time(pid).unwrap());
        let start = std::time::Instant::now();
        let mut x = 0u64;
        while start.elapsed() < Duration::from_millis(200) {
            x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
        }
        let (self1, proc1) = (self_cpu_time(), proc_cpu_time(pid).unwrap());
        // Wall time is an upper bound on one thread's CPU; a loaded machine
        // may give less, but never none over 200 ms.
        assert!(self1 > self0, "getrusage did not move: {self0:?}");
        assert!(self1 - self0 <= start.elapsed() + Duration::from_millis(50));
        assert!(proc1 >= proc0, "/proc went backwards");
        assert!(proc_cpu_time(u32::MAX).is_err(), "no such process");
    }
}
