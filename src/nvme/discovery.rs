//! The discovery controller's log page (NVMe-oF 1.1 §5): one entry per
//! subsystem this host may connect to, per listener.

use crate::config::TargetConfig;
use crate::wire::log_page::{self, DiscoveryEntry, SUBTYPE_NVM};
use std::net::SocketAddr;

/// Admin queue entries a host may ask for (ASQSZ in discovery entries).
pub const ADMIN_MAX_SQ_SIZE: u16 = 32;

/// The configuration is fixed at start, so the log never changes.
const GENERATION: u64 = 1;

pub fn entries(cfg: &TargetConfig, hostnqn: &str, local: SocketAddr) -> Vec<DiscoveryEntry> {
    let mut out = Vec::new();
    for s in cfg.subsystems.iter().filter(|s| s.host_allowed(hostnqn)) {
        for (i, l) in cfg.listen.iter().enumerate() {
            // A wildcard listener is reported with the address the host reached.
            let ip = if l.ip().is_unspecified() {
                local.ip()
            } else {
                l.ip()
            };
            out.push(DiscoveryEntry {
                subtype: SUBTYPE_NVM,
                portid: (i + 1) as u16,
                trsvcid: l.port().to_string(),
                traddr: ip.to_string(),
                subnqn: s.nqn.clone(),
                asqsz: ADMIN_MAX_SQ_SIZE,
            });
        }
    }
    out
}

pub fn log_page(cfg: &TargetConfig, hostnqn: &str, local: SocketAddr) -> Vec<u8> {
    log_page::discovery_log(GENERATION, &entries(cfg, hostnqn, local))
}
