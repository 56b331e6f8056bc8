//! Fault injection for tests: delays that hold a race window open so that
//! a test can hit it every time instead of by luck. Off unless the
//! environment variable is set when the process starts; each read once.

use std::sync::OnceLock;
use std::time::Duration;

/// `NVMF_TPC_FAULT_ATTACH_REPLY_MS`: the core owning a controller waits
/// this long before answering another core's I/O queue Connect it has
/// accepted (the window in which a reset or teardown can overtake the reply).
pub fn attach_reply_delay() -> Option<Duration> {
    static D: OnceLock<Option<Duration>> = OnceLock::new();
    *D.get_or_init(|| millis("NVMF_TPC_FAULT_ATTACH_REPLY_MS"))
}

fn millis(var: &str) -> Option<Duration> {
    let ms: u64 = std::env::var(var).ok()?.parse().ok()?;
    log::warn!("fault injection: {var}={ms}");
    Some(Duration::from_millis(ms))
}
