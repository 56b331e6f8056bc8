//! One executor ("shard"): its namespace handles, the
//! controllers it owns and the I/O queues it serves. Shards share nothing but
//! the immutable config and RAM disks; the control plane between them is
//! messages over a glommio channel mesh (never per I/O command): `ctl`.

mod ctl;
mod registry;
pub use ctl::{CtlMsg, Handoff};

use crate::admission::HostTable;
use crate::balance::Balance;
use crate::config::TargetConfig;
use crate::nvme::controller::{Controller, SubsysRef};
use crate::nvme::io_ctrl::{AttachInfo, LocalIoCtrl};
use crate::nvme::registry::Registry;
use crate::nvme::Namespace;
use crate::storage::DmaBudget;
use crate::trigger::Trigger;
use crate::wire::fabrics::connect_offset;
use crate::wire::log_page::SmartCounters;
use crate::wire::status::Status;
use glommio::channels::channel_mesh::{Full, MeshBuilder, Senders};
use glommio::channels::local_channel::{self, LocalReceiver, LocalSender};
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Controllers owned here, with the trigger that closes their admin queue.
pub struct OwnedCtrl {
    pub ctrl: Rc<Controller>,
    pub admin_kill: Rc<Trigger>,
}

pub struct Shard {
    pub id: usize,
    pub peers: usize,
    pub cfg: Arc<TargetConfig>,
    /// Per subsystem, this core's namespaces.
    pub namespaces: Vec<Vec<Rc<Namespace>>>,
    pub controllers: RefCell<HashMap<u16, OwnedCtrl>>,
    pub io_ctrls: RefCell<HashMap<u16, Rc<LocalIoCtrl>>>,
    cntlid_base: u16,
    cntlid_span: u16,
    cntlid_next: Cell<u16>,
    senders: Senders<CtlMsg>,
    pending: RefCell<HashMap<u64, LocalSender<CtlMsg>>>,
    next_req: Cell<u64>,
    /// Per subsystem I/O statistics of this core.
    pub stats: RefCell<Vec<SmartCounters>>,
    pub stop: Trigger,
    pub connections: RefCell<HashMap<u64, Rc<Trigger>>>,
    /// I/O queues of this core with commands outstanding (transport's flow
    /// batching reads it).
    pub active_io: Cell<usize>,
    next_conn: Cell<u64>,
    pub started: Instant,
    /// This core's DMA memory for command data (`--dma-memory`).
    pub dma: Rc<DmaBudget>,
    /// Controllers per host NQN, shared by every core.
    hosts: Arc<HostTable>,
    /// Connections per core, shared by every core.
    pub balance: Arc<Balance>,
    /// Connections handed over by other cores, until the transport takes them.
    handed_tx: LocalSender<Handoff>,
    handed_rx: RefCell<Option<LocalReceiver<Handoff>>>,
}

/// Controller ids 1..=0xFFEF are split into one contiguous slice per shard,
/// so allocation needs no lock and the owner of a cntlid is arithmetic.
const CNTLID_MIN: u16 = 1;
const CNTLID_MAX: u16 = 0xFFEF;

fn cntlid_span(peers: usize) -> u16 {
    ((CNTLID_MAX - CNTLID_MIN + 1) as usize / peers.max(1)) as u16
}

pub fn cntlid_owner(cntlid: u16, peers: usize) -> Option<usize> {
    if !(CNTLID_MIN..=CNTLID_MAX).contains(&cntlid) {
        return None;
    }
    let o = ((cntlid - CNTLID_MIN) / cntlid_span(peers)) as usize;
    (o < peers).then_some(o)
}

pub use crate::wire::fabrics::invalid_parameter_dw0 as ipo;

impl Shard {
    pub fn new(
        cfg: Arc<TargetConfig>,
        namespaces: Vec<Vec<Rc<Namespace>>>,
        senders: Senders<CtlMsg>,
        hosts: Arc<HostTable>,
        balance: Arc<Balance>,
    ) -> Shard {
        let id = senders.peer_id();
        let peers = senders.nr_consumers().max(1);
        let span = cntlid_span(peers);
        let base = CNTLID_MIN + span * id as u16;
        let nsub = cfg.subsystems.len();
        let dma = DmaBudget::new(cfg.dma_memory);
        let (handed_tx, handed_rx) = local_channel::new_unbounded();
        Shard {
            id,
            peers,
            cfg,
            namespaces,
            controllers: RefCell::new(HashMap::new()),
            io_ctrls: RefCell::new(HashMap::new()),
            cntlid_base: base,
            cntlid_span: span,
            cntlid_next: Cell::new(0),
            senders,
            pending: RefCell::new(HashMap::new()),
            next_req: Cell::new(1),
            stats: RefCell::new(vec![SmartCounters::default(); nsub]),
            stop: Trigger::new(),
            connections: RefCell::new(HashMap::new()),
            active_io: Cell::new(0),
            next_conn: Cell::new(0),
            started: Instant::now(),
            dma,
            hosts,
            balance,
            handed_tx,
            handed_rx: RefCell::new(Some(handed_rx)),
        }
    }

    pub fn namespace(&self, subsys: usize, nsid: u32) -> Option<&Rc<Namespace>> {
        self.namespaces
            .get(subsys)?
            .iter()
            .find(|n| n.cfg.nsid == nsid)
    }

    // ---- controllers ------------------------------------------------------

    pub fn subsys_name(&self, s: SubsysRef) -> &str {
        match s {
            SubsysRef::Discovery => crate::wire::fabrics::DISCOVERY_NQN,
            SubsysRef::Nvm(i) => &self.cfg.subsystems[i].nqn,
        }
    }

    fn alloc_cntlid(&self) -> Option<u16> {
        let map = self.controllers.borrow();
        if map.len() >= self.cfg.max_controllers {
            log::warn!(
                "core {}: controller limit ({}) reached",
                self.id,
                self.cfg.max_controllers
            );
            return None;
        }
        for _ in 0..self.cntlid_span {
            let off = self.cntlid_next.get();
            self.cntlid_next.set((off + 1) % self.cntlid_span);
            let id = self.cntlid_base + off;
            if !map.contains_key(&id) {
                return Some(id);
            }
        }
        None
    }

    /// Owner side of an I/O queue's Connect.
    #[allow(clippy::too_many_arguments)]
    fn check_attach(
        &self,
        from: usize,
        token: u64,
        cntlid: u16,
        qid: u16,
        hostnqn: &str,
        hostid: &[u8; 16],
        subnqn: &str,
    ) -> Result<AttachInfo, (Status, u32)> {
        let map = self.controllers.borrow();
        let invalid = |data: bool, off: u16| (Status::CONNECT_INVALID_PARAMETERS, ipo(data, off));
        let o = map
            .get(&cntlid)
            .filter(|o| !o.ctrl.destroyed.fired())
            .ok_or(invalid(true, connect_offset::CNTLID))?;
        let c = &o.ctrl;
        let SubsysRef::Nvm(si) = c.subsys else {
            return Err(invalid(false, connect_offset::QID));
        };
        // A controller that is not enabled (never yet, or being reset)
        // takes no I/O queues: they would join a controller whose queues
        // are being torn down. SPDK answers the same, naming the QID.
        if !c.ready() {
            return Err(invalid(false, connect_offset::QID));
        }
        if self.cfg.subsystems[si].nqn != subnqn {
            return Err(invalid(true, connect_offset::SUBNQN));
        }
        if c.hostnqn != hostnqn {
            return Err(invalid(true, connect_offset::HOSTNQN));
        }
        if &c.hostid != hostid {
            return Err(invalid(true, connect_offset::HOSTID));
        }
        let allowed = match c.features.borrow().number_of_queues {
            Some(v) => (v & 0xFFFF) as u16 + 1,
            None => c.max_io_queues,
        };
        if qid > allowed {
            return Err(invalid(false, connect_offset::QID));
        }
        let mut q = c.io_queues.borrow_mut();
        // A torn-down queue's commands may still run at the backing.
        if q.contains_key(&qid) || c.retiring.borrow().contains_key(&qid) {
            return Err(invalid(false, connect_offset::QID));
        }
        q.insert(qid, (from, token));
        Ok(AttachInfo {
            subsys: si,
            state: c.io_state(),
        })
    }

    /// This core's entry for a controller's I/O queues, with a queue that
    /// is still connecting added to it.
    fn pending_io(&self, cntlid: u16, qid: u16, token: u64, kill: Rc<Trigger>) -> Rc<LocalIoCtrl> {
        let local = self
            .io_ctrls
            .borrow_mut()
            .entry(cntlid)
            .or_insert_with(|| Rc::new(LocalIoCtrl::new(cntlid)))
            .clone();
        local.queues.borrow_mut().push((qid, token, kill));
        local
    }

    /// An I/O queue served here closed.
    pub fn detach_io(self: &Rc<Self>, cntlid: u16, qid: u16, token: u64) {
        {
            let mut m = self.io_ctrls.borrow_mut();
            if let Some(l) = m.get(&cntlid) {
                l.queues.borrow_mut().retain(|(_, t, _)| *t != token);
                if l.queues.borrow().is_empty() {
                    m.remove(&cntlid);
                }
            }
        }
        match cntlid_owner(cntlid, self.peers) {
            Some(owner) if owner == self.id => self.detached(cntlid, qid, token),
            Some(owner) => self.post(owner, CtlMsg::DetachIo { cntlid, qid, token }),
            None => {}
        }
    }

    /// Owner side of a closed I/O queue: its qid is free again, unless a new
    /// queue took it meanwhile.
    fn detached(&self, cntlid: u16, qid: u16, token: u64) {
        let release = {
            let map = self.controllers.borrow();
            let Some(o) = map.get(&cntlid) else {
                return;
            };
            for q in [&o.ctrl.io_queues, &o.ctrl.retiring] {
                let mut q = q.borrow_mut();
                if q.get(&qid).is_some_and(|(_, t)| *t == token) {
                    q.remove(&qid);
                }
            }
            o.ctrl.destroyed.fired() && o.ctrl.queues_gone()
        };
        if release {
            self.release_controller(cntlid);
            log::info!("controller {cntlid}: every queue finished; cntlid released");
        }
    }

    /// Destroy a controller owned here: its I/O queues everywhere and its admin queue.
    /// The cntlid stays taken (and the controller counted) until every
    /// I/O queue has finished its commands and detached (`detached`).
    pub fn destroy_controller(self: &Rc<Self>, cntlid: u16, why: &str) {
        let (ctrl, kill) = match self.controllers.borrow().get(&cntlid) {
            Some(o) if !o.ctrl.destroyed.fired() => (o.ctrl.clone(), o.admin_kill.clone()),
            _ => return,
        };
        ctrl.destroyed.fire();
        self.teardown_io(&ctrl);
        kill.fire();
        log::info!(
            "controller {cntlid} of host {} destroyed: {why}",
            ctrl.host()
        );
        if ctrl.queues_gone() {
            self.release_controller(cntlid);
        }
    }

    /// A destroyed controller's resources are free: its cntlid, and its
    /// place in its host's count.
    fn release_controller(&self, cntlid: u16) {
        if let Some(o) = self.controllers.borrow_mut().remove(&cntlid) {
            self.hosts.release(&o.ctrl.host());
        }
    }

    /// Keep-alive timer of a controller owned here (NVMe Base 2.0 §3.9). With
    /// traffic based keep alive, I/O on any core counts: before expiring, ask
    /// the cores that serve its I/O queues when they last saw a command.
    async fn keep_alive(self: Rc<Self>, ctrl: Rc<Controller>) {
        // Sleeps end at once when the controller is destroyed (a timer of
        // up to 2^32 ms must not keep a dead controller in memory).
        loop {
            if ctrl.destroyed.fired() {
                return;
            }
            let kato = ctrl.kato_ms.get() as u64;
            if kato == 0 {
                ctrl.destroyed.sleep(Duration::from_secs(1)).await;
                continue;
            }
            let kato = Duration::from_millis(kato);
            let idle = ctrl.last_activity.get().elapsed();
            if idle < kato {
                ctrl.destroyed.sleep(kato - idle).await;
                continue;
            }
            let mut min_idle: Option<u64> = None;
            for core in ctrl.io_cores() {
                let from = self.id;
                let cntlid = ctrl.cntlid;
                if let Some(CtlMsg::QueryResp {
                    idle_ms: Some(ms), ..
                }) = self
                    .request(core, |req| CtlMsg::Query {
                        req,
                        from,
                        cntlid,
                        subsys: 0,
                    })
                    .await
                {
                    min_idle = Some(min_idle.map_or(ms, |m| m.min(ms)));
                }
            }
            if ctrl.destroyed.fired() {
                return;
            }
            match min_idle {
                Some(ms) if Duration::from_millis(ms) < kato => {
                    ctrl.last_activity
                        .set(Instant::now() - Duration::from_millis(ms));
                }
                _ => {
                    log::warn!(
                        "controller {}: keep alive timeout ({} ms) expired",
                        ctrl.cntlid,
                        kato.as_millis()
                    );
                    self.destroy_controller(ctrl.cntlid, "keep alive expired");
                    return;
                }
            }
        }
    }

    // ---- connections --------------------------------------------------------

    /// Register a connection; `None` when this core is at its limit.
    pub fn register_connection(&self) -> Option<(u64, Rc<Trigger>)> {
        let mut c = self.connections.borrow_mut();
        if c.len() >= self.cfg.max_connections {
            return None;
        }
        let id = self.next_conn.get();
        self.next_conn.set(id + 1);
        let t = Rc::new(Trigger::new());
        c.insert(id, t.clone());
        Some((id, t))
    }

    /// Send a connection this core accepted to core `to` to serve.
    pub fn hand_over(self: &Rc<Self>, to: usize, h: Handoff) {
        self.post(to, CtlMsg::Connection(h));
    }

    /// The connections other cores hand to this one (taken once, by the
    /// transport's task that serves them).
    pub fn take_handed(&self) -> Option<LocalReceiver<Handoff>> {
        self.handed_rx.borrow_mut().take()
    }

    pub fn unregister_connection(&self, id: u64) {
        self.connections.borrow_mut().remove(&id);
    }

    pub fn connect_timeout(&self) -> Duration {
        self.cfg.connect_timeout
    }

    /// Graceful stop: close every connection (each finishes its in-flight
    /// commands), wait for them, flush the backings. False when a flush
    /// failed: data acknowledged without FUA may not be on stable storage,
    /// and the process must say so in its exit status.
    pub async fn shutdown(self: &Rc<Self>) -> bool {
        self.stop.fire();
        let conns: Vec<_> = self.connections.borrow().values().cloned().collect();
        for k in conns {
            k.fire();
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.connections.borrow().is_empty() && Instant::now() < deadline {
            glommio::timer::sleep(Duration::from_millis(20)).await;
        }
        let mut flushed = true;
        for ns in self.namespaces.iter().flatten() {
            if let Err(e) = ns.backend.flush().await {
                log::error!(
                    "namespace {}: flush at shutdown failed: {e}; data written without FUA may be lost",
                    ns.cfg.nsid
                );
                flushed = false;
            }
        }
        flushed
    }
}

/// Set by the signal handler thread; each shard polls it.
pub static STOP: AtomicBool = AtomicBool::new(false);

/// Tokens naming I/O queues, unique across cores.
pub(super) static NEXT_QUEUE_TOKEN: AtomicU64 = AtomicU64::new(1);

pub async fn wait_for_stop() {
    while !STOP.load(Ordering::Relaxed) {
        glommio::timer::sleep(Duration::from_millis(100)).await;
    }
}

pub fn mesh(peers: usize) -> MeshBuilder<CtlMsg, Full> {
    MeshBuilder::full(peers, 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cntlid_slices() {
        for peers in [1usize, 2, 3, 8, 64] {
            let span = cntlid_span(peers);
            for p in 0..peers {
                let first = CNTLID_MIN + span * p as u16;
                let last = first + span - 1;
                assert_eq!(cntlid_owner(first, peers), Some(p));
                assert_eq!(cntlid_owner(last, peers), Some(p));
                assert!(last <= CNTLID_MAX);
            }
        }
        assert_eq!(cntlid_owner(0, 2), None);
        assert_eq!(cntlid_owner(0xFFFF, 2), None);
        assert_eq!(cntlid_owner(0xFFF0, 2), None);
    }
}
