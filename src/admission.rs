//! Per-host admission: how many controllers each host NQN holds across
//! every core, so that one host cannot take every controller the target
//! has and lock the others out. Touched only when a controller is created
//! or released (control plane), never per command.

use std::collections::HashMap;
use std::sync::Mutex;

/// Controllers (admin queues, discovery included) one host NQN may hold at
/// once on the whole target (`--max-controllers-per-host`). Each holds at
/// most `--max-io-queues` + 1 connections, which bounds a host's
/// connections too.
pub const DEFAULT_CONTROLLERS_PER_HOST: u32 = 64;

/// Who a controller's host is, for its limit: its Host NQN, or for a host
/// that sent none (SPDK's by default), its Host Identifier.
pub fn host_key(hostnqn: &str, hostid: &[u8; 16]) -> String {
    if hostnqn.is_empty() {
        hostid.iter().map(|b| format!("{b:02x}")).collect()
    } else {
        hostnqn.to_string()
    }
}

pub struct HostTable {
    limit: usize,
    held: Mutex<HashMap<String, usize>>,
}

impl HostTable {
    pub fn new(limit: usize) -> HostTable {
        HostTable {
            limit,
            held: Mutex::new(HashMap::new()),
        }
    }

    /// Count one more controller for `host`; false when it holds the limit.
    pub fn admit(&self, host: &str) -> bool {
        let mut m = self.held.lock().unwrap_or_else(|p| p.into_inner());
        let n = m.entry(host.to_string()).or_insert(0);
        if *n >= self.limit {
            return false;
        }
        *n += 1;
        true
    }

    /// One controller of `host` is gone.
    pub fn release(&self, host: &str) {
        let mut m = self.held.lock().unwrap_or_else(|p| p.into_inner());
        let n = m.get_mut(host).expect("a released controller was admitted");
        assert!(*n > 0, "controller count of {host} would go negative");
        *n -= 1;
        if *n == 0 {
            m.remove(host);
        }
    }

    pub fn limit(&self) -> usize {
        self.limit
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_host_at_its_limit_is_refused_and_others_are_not() {
        let t = HostTable::new(2);
        assert!(t.admit("a") && t.admit("a"));
        assert!(!t.admit("a"));
        assert!(t.admit("b"));
        t.release("a");
        assert!(t.admit("a"));
    }
}
