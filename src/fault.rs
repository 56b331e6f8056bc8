//! Fault injection for tests: delays that hold a race window open so that
//! a test can hit it every time instead of by luck, and broken promises
//! that show a test bites. Off unless the environment variable is set when
//! the process starts; each read once.

use std::sync::OnceLock;
use std::time::Duration;

/// `NVMF_TPC_FAULT_ATTACH_REPLY_MS`: the core owning a controller waits
/// this long before answering another core's I/O queue Connect it has
/// accepted (the window in which a reset or teardown can overtake the reply).
pub fn attach_reply_delay() -> Option<Duration> {
    static D: OnceLock<Option<Duration>> = OnceLock::new();
    *D.get_or_init(|| millis("NVMF_TPC_FAULT_ATTACH_REPLY_MS"))
}

/// `NVMF_TPC_FAULT_SKIP_FLUSH=1`: flushes of files and block devices
/// (Flush, FUA, write-through) return without syncing anything. Breaks the
/// durability promise on purpose, to show that the power-cut test
/// (tests/power_cut.rs) catches it.
pub fn skip_flush() -> bool {
    static F: OnceLock<bool> = OnceLock::new();
    *F.get_or_init(|| {
        let on = std::env::var("NVMF_TPC_FAULT_SKIP_FLUSH").is_ok_and(|v| v == "1");
        if on {
            log::warn!("fault injection: NVMF_TPC_FAULT_SKIP_FLUSH=1: flushes do nothing");
        }
        on
    })
}

fn millis(var: &str) -> Option<Duration> {
    let ms: u64 = std::env::var(var).ok()?.parse().ok()?;
    log::warn!("fault injection: {var}={ms}");
    Some(Duration::from_millis(ms))
}
