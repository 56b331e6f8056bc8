//! NVMe/TCP host (initiator) library on glommio, used by the perf tool, the
//! CLI tools and the integration tests.
//!
//! Single-threaded: everything lives on one glommio `LocalExecutor`. A
//! [`Queue`] is one NVMe queue on one TCP connection; it runs a reader task
//! (parses every PDU the target sends, verifies digests, routes data and
//! completions to the command they belong to) and a writer task (sends the
//! PDUs that commands queue, several per `send` when many are ready). Any
//! number of tasks may [`Queue::submit`] on one queue at once, up to
//! `queue_size - 1` commands in flight; more wait for a free slot.
//!
//! A [`Controller`] owns the admin queue and does the fabrics start-up
//! (Connect, CAP, CC.EN, CSTS.RDY, Identify); its [`Controller::connect_io_queue`]
//! opens [`IoQueue`]s, which add the NVM commands (read, write, ...).
//!
//! Every byte from the target is treated as hostile: offsets and lengths of
//! data PDUs and R2Ts are checked against the command they name; a bad PDU
//! closes the connection (after a best-effort H2CTermReq) and fails every
//! command with [`HostError::Protocol`]. Nothing the target sends can make the
//! host panic.
//!
//! All encoding and decoding is done by [`crate::wire`].

#![warn(missing_docs)]

mod controller;
mod io_queue;
mod queue;
#[cfg(test)]
mod tests;

pub use crate::wire::log_page::DiscoveryEntry;
pub use controller::Controller;
pub use io_queue::{IoQueue, DSM_RANGES_MAX, NLB_MAX};
pub use queue::Queue;

use crate::wire::command::Cqe;
use crate::wire::pdu::{Digests, FatalError};
use crate::wire::status::Status;
use std::net::SocketAddr;

/// Everything needed to connect to one NVM subsystem of a target.
#[derive(Debug, Clone)]
pub struct HostConfig {
    /// Target address (NVMe/TCP default port is 4420).
    pub addr: SocketAddr,
    /// NQN of the subsystem to connect to.
    pub subnqn: String,
    /// This host's NQN (at most 223 bytes).
    pub hostnqn: String,
    /// This host's 128-bit identifier.
    pub hostid: [u8; 16],
    /// Header and data digests to ask for in ICReq; the target must agree.
    pub digests: Digests,
    /// Keep alive timeout sent in the admin queue's Connect (0 = none).
    pub kato_ms: u32,
    /// Entries of each I/O queue (SQSIZE + 1); at most `queue_size - 1`
    /// commands are in flight. Clamped to CAP.MQES + 1 by the controller.
    pub queue_size: u16,
    /// Entries of the admin queue (Linux and SPDK use 32).
    pub admin_queue_size: u16,
    /// Host PDU data alignment asked of the target (0's based dwords, ≤ 31).
    pub hpda: u8,
    /// Ask the target to disable SQ flow control (Connect CATTR bit 2), which
    /// lets it complete reads with a C2HData SUCCESS flag and no CapsuleResp.
    pub disable_sqflow: bool,
    /// How long each queue's reader keeps polling its socket (non-blocking
    /// `recv`, then yield) after the last data before it sleeps on io_uring.
    /// Saves the wake-up of a parked executor per response under load, at
    /// the cost of a busy CPU. Zero (the default): never poll.
    pub idle_poll: std::time::Duration,
}

/// Host identifier used by [`HostConfig::new`] ("nvmf-tpc-host" in ASCII, then 0 and 1).
pub const DEFAULT_HOSTID: [u8; 16] = *b"nvmf-tpc-host\x00\x00\x01";

impl HostConfig {
    /// Defaults: the fixed [`DEFAULT_HOSTID`] and its UUID host NQN, no digests,
    /// KATO 30 s, 128-entry I/O queues, 32-entry admin queue, HPDA 0.
    pub fn new(addr: SocketAddr, subnqn: impl Into<String>) -> Self {
        HostConfig {
            addr,
            subnqn: subnqn.into(),
            hostnqn: uuid_hostnqn(&DEFAULT_HOSTID),
            hostid: DEFAULT_HOSTID,
            digests: Digests::default(),
            kato_ms: 30_000,
            queue_size: 128,
            admin_queue_size: 32,
            hpda: 0,
            disable_sqflow: false,
            idle_poll: std::time::Duration::ZERO,
        }
    }

    /// Sets the host identifier and the matching UUID host NQN.
    pub fn with_hostid(mut self, hostid: [u8; 16]) -> Self {
        self.hostid = hostid;
        self.hostnqn = uuid_hostnqn(&hostid);
        self
    }
}

/// `nqn.2014-08.org.nvmexpress:uuid:<hostid as a UUID>` (NVMe Base 2.0 §4.5).
pub fn uuid_hostnqn(hostid: &[u8; 16]) -> String {
    let hex: Vec<String> = hostid.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "nqn.2014-08.org.nvmexpress:uuid:{}-{}-{}-{}-{}",
        hex[0..4].concat(),
        hex[4..6].concat(),
        hex[6..8].concat(),
        hex[8..10].concat(),
        hex[10..16].concat()
    )
}

/// Why a host operation failed.
#[derive(Debug)]
pub enum HostError {
    /// Socket error (connect, read or write).
    Io(std::io::Error),
    /// The command completed with a non-success status; the CQE is attached.
    Status(Status, Cqe),
    /// The target broke the protocol. For a bad PDU the connection is closed;
    /// a data digest error or a short data transfer fails only that command.
    Protocol(String),
    /// The target sent a C2HTermReq (fatal error status and information).
    TermReq(FatalError),
    /// The queue is closed (by [`Queue::close`], by the target, or after an
    /// earlier failure).
    Closed,
    /// The caller asked for something that cannot be sent; nothing was sent.
    Invalid(String),
}

impl std::fmt::Display for HostError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HostError::Io(e) => write!(f, "I/O error: {e}"),
            HostError::Status(s, c) => write!(f, "command {} failed: {s}", c.cid),
            HostError::Protocol(m) => write!(f, "protocol error: {m}"),
            HostError::TermReq(e) => write!(
                f,
                "target terminated the connection (fes {:#x}, fei {:#x})",
                e.fes, e.fei
            ),
            HostError::Closed => write!(f, "queue closed"),
            HostError::Invalid(m) => write!(f, "invalid request: {m}"),
        }
    }
}

impl std::error::Error for HostError {}

impl From<std::io::Error> for HostError {
    fn from(e: std::io::Error) -> Self {
        HostError::Io(e)
    }
}

impl HostError {
    /// The NVMe status, when the command completed with one.
    pub fn status(&self) -> Option<Status> {
        match self {
            HostError::Status(s, _) => Some(*s),
            _ => None,
        }
    }
}

/// A successful completion: the CQE and the data the command read (empty for
/// commands without data in).
#[derive(Debug, Clone)]
pub struct Completion {
    /// The completion queue entry (success status).
    pub cqe: Cqe,
    /// Data read by the command (`data_in_len` bytes).
    pub data: Vec<u8>,
}
