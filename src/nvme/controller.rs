//! A controller: the state an admin queue's Connect creates (NVMe Base 2.0
//! §3.1, §3.5). It lives on the core whose connection created it; its I/O
//! queues may live on any core and reach it only by control messages.

use super::io_ctrl::IoState;
use crate::config::{TargetConfig, KEEP_ALIVE_GRANULARITY_100MS};
use crate::wire::fabrics::{cc, csts, property};
use crate::wire::log_page::ErrorEntry;
use crate::wire::status::Status;
use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Instant;

/// Index of the subsystem a controller belongs to; discovery has its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubsysRef {
    Discovery,
    Nvm(usize),
}

pub const NVME_VERSION_1_4: u32 = 0x0001_0400;
/// CAP.TO in 500 ms units: how long the host waits for CSTS.RDY.
const CAP_TIMEOUT_500MS: u64 = 20;
/// Error log entries kept per controller.
pub const ERROR_LOG_ENTRIES: usize = 64;
/// Outstanding Asynchronous Event Requests per controller (AERL + 1).
pub const AER_LIMIT: usize = 4;
/// Outstanding Aborts (ACL + 1).
pub const ABORT_LIMIT: u8 = 4;

/// Feature values kept per controller (Set/Get Features).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Features {
    pub arbitration: u32,
    pub power_management: u32,
    pub temperature_threshold: u32,
    pub error_recovery: u32,
    pub volatile_write_cache: bool,
    /// Granted queue counts, 0's based (NSQA in bits 15:0, NCQA in 31:16).
    pub number_of_queues: Option<u32>,
    pub async_event_config: u32,
}

impl Features {
    /// Defaults; the write cache is on where there is one (`vwc_present`).
    pub fn defaults(vwc_present: bool) -> Self {
        Features {
            arbitration: 0,
            power_management: 0,
            temperature_threshold: 343,
            error_recovery: 0,
            volatile_write_cache: vwc_present,
            number_of_queues: None,
            async_event_config: 0,
        }
    }
}

/// What a CC write asks of the core that owns the controller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CcEffect {
    None,
    /// Controller became ready: I/O queues may run.
    Enabled,
    /// CC.EN 1→0: every I/O queue is torn down.
    Reset,
    /// Shutdown notification: I/O queues are torn down, the backings
    /// flushed, and then CSTS.SHST says complete (`shutdown_done`).
    Shutdown,
}

pub struct Controller {
    pub cntlid: u16,
    pub subsys: SubsysRef,
    pub hostnqn: String,
    pub hostid: [u8; 16],
    pub kato_ms: Cell<u32>,
    pub cc: Cell<u32>,
    pub csts: Cell<u32>,
    pub features: RefCell<Features>,
    /// Some namespace of the subsystem has a volatile write cache (a file
    /// or block device: the page cache is bypassed, but the device's cache
    /// and the file system's metadata need a flush).
    pub vwc_present: bool,
    /// Sequence number of the state its I/O queues follow (`IoState`).
    io_state_seq: Cell<u64>,
    /// I/O queues attached: qid → (core serving it, its token).
    pub io_queues: RefCell<BTreeMap<u16, (usize, u64)>>,
    /// I/O queues torn down whose commands may still be running at the
    /// backing: their qids (and the controller's cntlid) are not reused
    /// until each has detached.
    pub retiring: RefCell<BTreeMap<u16, (usize, u64)>>,
    pub max_io_queues: u16,
    /// Last command seen on the admin queue (and, with TBKAS, learnt from I/O queues).
    pub last_activity: Cell<Instant>,
    /// Outstanding Asynchronous Event Requests (their CIDs).
    pub aers: RefCell<VecDeque<u16>>,
    pub errors: RefCell<VecDeque<ErrorEntry>>,
    pub error_count: Cell<u64>,
    pub queue_depth: u16,
    /// Fired once when the controller is destroyed; wakes its keep-alive timer.
    pub destroyed: crate::trigger::Trigger,
    pub created: Instant,
}

impl Controller {
    pub fn new(
        cntlid: u16,
        subsys: SubsysRef,
        hostnqn: String,
        hostid: [u8; 16],
        kato_ms: u32,
        cfg: &TargetConfig,
    ) -> Controller {
        let vwc_present = match subsys {
            SubsysRef::Nvm(i) => cfg
                .subsystems
                .get(i)
                .is_some_and(|s| s.has_volatile_write_cache()),
            SubsysRef::Discovery => false,
        };
        Controller {
            cntlid,
            subsys,
            hostnqn,
            hostid,
            kato_ms: Cell::new(kato_ms),
            cc: Cell::new(0),
            csts: Cell::new(0),
            features: RefCell::new(Features::defaults(vwc_present)),
            vwc_present,
            io_state_seq: Cell::new(1),
            io_queues: RefCell::new(BTreeMap::new()),
            retiring: RefCell::new(BTreeMap::new()),
            max_io_queues: cfg.max_io_queues,
            last_activity: Cell::new(Instant::now()),
            aers: RefCell::new(VecDeque::new()),
            errors: RefCell::new(VecDeque::new()),
            error_count: Cell::new(0),
            queue_depth: cfg.queue_depth,
            destroyed: crate::trigger::Trigger::new(),
            created: Instant::now(),
        }
    }

    /// Its host, for limits and logs: the Host NQN, or the Host Identifier
    /// of a host that sent none.
    pub fn host(&self) -> String {
        crate::admission::host_key(&self.hostnqn, &self.hostid)
    }

    pub fn is_discovery(&self) -> bool {
        self.subsys == SubsysRef::Discovery
    }

    pub fn ready(&self) -> bool {
        self.csts.get() & csts::RDY != 0
    }

    /// The state its I/O queues follow, as of now.
    pub fn io_state(&self) -> IoState {
        IoState {
            seq: self.io_state_seq.get(),
            ready: self.ready(),
            write_through: !self.features.borrow().volatile_write_cache,
        }
    }

    /// The state as of now, under a new sequence number (to announce a change).
    pub fn next_io_state(&self) -> IoState {
        self.io_state_seq.set(self.io_state_seq.get() + 1);
        self.io_state()
    }

    /// Shutdown processing finished (NVMe Base 2.0 §3.6.2): SHST complete,
    /// unless the host cleared SHN or reset meanwhile; a failed flush also
    /// sets Controller Fatal Status.
    pub fn shutdown_done(&self, flushed: bool) {
        let c = self.csts.get();
        if c & csts::SHST_MASK != csts::SHST_OCCURRING {
            return;
        }
        let mut c = (c & !csts::SHST_MASK) | csts::SHST_COMPLETE;
        if !flushed {
            c |= csts::CFS;
        }
        self.csts.set(c);
    }

    /// Controller Capabilities (§3.1.3.1).
    pub fn cap(&self) -> u64 {
        let mqes = (self.queue_depth - 1) as u64;
        let cqr = 1u64 << 16; // contiguous queues required
        let to = CAP_TIMEOUT_500MS << 24;
        let css_nvm = 1u64 << 37;
        // MPSMIN = MPSMAX = 0: 4 KiB pages.
        mqes | cqr | to | css_nvm
    }

    pub fn property_get(&self, offset: u32, size8: bool) -> Result<u64, Status> {
        let (v, is8) = match offset {
            property::CAP => (self.cap(), true),
            property::VS => (NVME_VERSION_1_4 as u64, false),
            property::CC => (self.cc.get() as u64, false),
            property::CSTS => (self.csts.get() as u64, false),
            // CRTO: ready timeouts in 500 ms units, same as CAP.TO.
            property::CRTO => ((CAP_TIMEOUT_500MS << 16) | CAP_TIMEOUT_500MS, false),
            _ => return Err(Status::INVALID_FIELD),
        };
        if is8 != size8 {
            return Err(Status::INVALID_FIELD);
        }
        Ok(v)
    }

    /// Property Set: only CC is writable (and NSSR, which we do not support).
    pub fn property_set(&self, offset: u32, size8: bool, value: u64) -> Result<CcEffect, Status> {
        if offset != property::CC || size8 {
            return Err(Status::INVALID_FIELD);
        }
        Ok(self.write_cc(value as u32))
    }

    /// CC semantics (§3.5.1, §3.6): enable checks the queue entry sizes, page
    /// size, arbitration and command set, else reports Controller Fatal Status.
    fn write_cc(&self, new: u32) -> CcEffect {
        let old = self.cc.get();
        self.cc.set(new);
        let mut effect = CcEffect::None;
        let was_en = old & cc::EN != 0;
        let en = new & cc::EN != 0;
        if en && !was_en {
            let io = !self.is_discovery();
            let ok = cc::mps(new) == 0
                && cc::ams(new) == 0
                && cc::css(new) == 0
                && (!io || (cc::iosqes(new) == 6 && cc::iocqes(new) == 4));
            if ok {
                self.csts.set(csts::RDY);
                effect = CcEffect::Enabled;
            } else {
                self.csts.set(self.csts.get() | csts::CFS);
            }
        } else if !en && was_en {
            self.csts.set(self.csts.get() & !(csts::RDY | csts::CFS));
            effect = CcEffect::Reset;
        }
        let shn = cc::shn(new);
        if shn != 0 && cc::shn(old) == 0 {
            // Complete once the backings are flushed (`shutdown_done`).
            self.csts
                .set((self.csts.get() & !csts::SHST_MASK) | csts::SHST_OCCURRING);
            effect = CcEffect::Shutdown;
        } else if shn == 0 && cc::shn(old) != 0 {
            self.csts.set(self.csts.get() & !csts::SHST_MASK);
        }
        effect
    }

    /// Keep alive granularity reported in KAS.
    pub fn kas(&self) -> u16 {
        KEEP_ALIVE_GRANULARITY_100MS
    }

    pub fn touch(&self) {
        self.last_activity.set(Instant::now());
    }

    /// Has every I/O queue, live or torn down, detached?
    pub fn queues_gone(&self) -> bool {
        self.io_queues.borrow().is_empty() && self.retiring.borrow().is_empty()
    }

    /// The cores that serve this controller's I/O queues.
    pub fn io_cores(&self) -> BTreeSet<usize> {
        self.io_queues
            .borrow()
            .values()
            .map(|(core, _)| *core)
            .collect()
    }

    pub fn record_error(&self, sqid: u16, cid: u16, status: Status, nsid: u32, lba: u64) {
        let n = self.error_count.get() + 1;
        self.error_count.set(n);
        let mut e = self.errors.borrow_mut();
        e.push_front(ErrorEntry {
            count: n,
            sqid,
            cid,
            status: status.0,
            lba,
            nsid,
        });
        e.truncate(ERROR_LOG_ENTRIES);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::*;

    fn cfg() -> TargetConfig {
        TargetConfig {
            listen: vec![],
            cpus: vec![0],
            subsystems: vec![],
            queue_depth: 128,
            max_io_size: 128 * 1024,
            in_capsule_data: 8192,
            maxh2cdata: 128 * 1024,
            max_c2h_data: 128 * 1024,
            max_io_queues: DEFAULT_IO_QUEUES,
            max_connections: 16,
            max_controllers: 16,
            max_controllers_per_host: 16,
            dma_memory: 1 << 20,
            idle_poll: std::time::Duration::ZERO,
            connect_timeout: std::time::Duration::from_secs(10),
            pdu_timeout: std::time::Duration::from_secs(30),
            tcp_congestion: None,
            socket_buffer: 0,
        }
    }

    fn ctrl() -> Controller {
        Controller::new(1, SubsysRef::Nvm(0), "h".into(), [0; 16], 0, &cfg())
    }

    const CC_GOOD: u64 = 1 | (6 << 16) | (4 << 20);

    #[test]
    fn enable_and_disable() {
        let c = ctrl();
        assert_eq!(c.property_get(property::CAP, true).unwrap() & 0xFFFF, 127);
        assert!(c.property_get(property::CAP, false).is_err());
        assert_eq!(
            c.property_set(property::CC, false, CC_GOOD).unwrap(),
            CcEffect::Enabled
        );
        assert!(c.ready());
        assert_eq!(
            c.property_set(property::CC, false, 0).unwrap(),
            CcEffect::Reset
        );
        assert!(!c.ready());
    }

    #[test]
    fn bad_enable_sets_cfs() {
        let c = ctrl();
        c.property_set(property::CC, false, 1).unwrap();
        assert!(!c.ready());
        assert_ne!(c.csts.get() & csts::CFS, 0);
    }

    #[test]
    fn shutdown_reports_complete() {
        let c = ctrl();
        c.property_set(property::CC, false, CC_GOOD).unwrap();
        let e = c
            .property_set(property::CC, false, CC_GOOD | (1 << 14))
            .unwrap();
        assert_eq!(e, CcEffect::Shutdown);
        assert_eq!(c.csts.get() & csts::SHST_MASK, csts::SHST_OCCURRING);
        c.shutdown_done(true);
        assert_eq!(c.csts.get() & csts::SHST_MASK, csts::SHST_COMPLETE);
        assert_eq!(c.csts.get() & csts::CFS, 0);
    }

    #[test]
    fn read_only_properties() {
        let c = ctrl();
        assert!(c.property_set(property::CAP, true, 0).is_err());
        assert!(c.property_set(property::CSTS, false, 0).is_err());
        assert!(c.property_set(property::VS, false, 0).is_err());
        assert!(c.property_get(0x1000, false).is_err());
    }
}
