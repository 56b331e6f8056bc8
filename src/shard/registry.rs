//! The controller core's view of a shard (`nvme::registry::Registry`):
//! creating controllers, attaching I/O queues across cores, statistics and
//! the error log, expressed in this shard's resources and control messages.

use super::{cntlid_owner, ipo, CtlMsg, OwnedCtrl, Shard, NEXT_QUEUE_TOKEN};
use crate::config::{TargetConfig, DISCOVERY_DEFAULT_KATO_MS};
use crate::nvme::controller::{Controller, SubsysRef};
use crate::nvme::io_ctrl::{AttachInfo, LocalIoCtrl};
use crate::nvme::registry::Registry;
use crate::nvme::Namespace;
use crate::trigger::Trigger;
use crate::wire::fabrics::connect_offset;
use crate::wire::log_page::SmartCounters;
use crate::wire::status::Status;
use std::cell::RefCell;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::time::Duration;
/// The controller core's view of this shard (`nvme::registry`).
impl Registry for Shard {
    fn cfg(&self) -> &TargetConfig {
        &self.cfg
    }

    fn core(&self) -> usize {
        self.id
    }

    fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    fn namespace(&self, subsys: usize, nsid: u32) -> Option<&Rc<Namespace>> {
        Shard::namespace(self, subsys, nsid)
    }

    fn create_controller(
        self: &Rc<Self>,
        subsys: SubsysRef,
        hostnqn: String,
        hostid: [u8; 16],
        kato_ms: u32,
        admin_kill: Rc<Trigger>,
    ) -> Result<Rc<Controller>, Status> {
        let cntlid = self.alloc_cntlid().ok_or(Status::CONNECT_CONTROLLER_BUSY)?;
        let host = crate::admission::host_key(&hostnqn, &hostid);
        if !self.hosts.admit(&host) {
            log::warn!(
                "connect refused: host {host} holds {} controllers, its limit (--max-controllers-per-host)",
                self.hosts.limit()
            );
            return Err(Status::CONNECT_CONTROLLER_BUSY);
        }
        let kato_ms = if kato_ms == 0 && subsys == SubsysRef::Discovery {
            DISCOVERY_DEFAULT_KATO_MS
        } else {
            kato_ms
        };
        let ctrl = Rc::new(Controller::new(
            cntlid, subsys, hostnqn, hostid, kato_ms, &self.cfg,
        ));
        self.controllers.borrow_mut().insert(
            cntlid,
            OwnedCtrl {
                ctrl: ctrl.clone(),
                admin_kill,
            },
        );
        let me = self.clone();
        let c = ctrl.clone();
        glommio::spawn_local(async move { me.keep_alive(c).await }).detach();
        log::info!(
            "controller {cntlid} created for host {} on {} (kato {} ms, core {})",
            ctrl.host(),
            self.subsys_name(subsys),
            kato_ms,
            self.id
        );
        Ok(ctrl)
    }

    /// Attach an I/O queue served here to controller `cntlid`, wherever it lives.
    async fn attach_io(
        self: &Rc<Self>,
        cntlid: u16,
        qid: u16,
        hostnqn: &str,
        hostid: [u8; 16],
        subnqn: &str,
        kill: Rc<Trigger>,
    ) -> Result<(AttachInfo, Rc<LocalIoCtrl>, u64), (Status, u32)> {
        let owner = cntlid_owner(cntlid, self.peers).ok_or((
            Status::CONNECT_INVALID_PARAMETERS,
            ipo(true, connect_offset::CNTLID),
        ))?;
        let token = NEXT_QUEUE_TOKEN.fetch_add(1, Ordering::Relaxed);
        // Registered here before the owner hears of it: a Teardown or a
        // state change the owner sends once it has attached the queue can
        // then never arrive before there is something here to apply it to.
        let local = self.pending_io(cntlid, qid, token, kill.clone());
        let result = if owner == self.id {
            self.check_attach(self.id, token, cntlid, qid, hostnqn, &hostid, subnqn)
        } else {
            let (h, s) = (hostnqn.to_string(), subnqn.to_string());
            let from = self.id;
            match self
                .request(owner, |req| CtlMsg::AttachIo {
                    req,
                    from,
                    cntlid,
                    qid,
                    token,
                    hostnqn: h,
                    hostid,
                    subnqn: s,
                })
                .await
            {
                Some(CtlMsg::AttachIoResp { result, .. }) => result,
                // No answer: the owner may still attach it; undo that too.
                _ => Err((Status::INTERNAL_ERROR, 0)),
            }
        };
        let torn_down = kill.fired();
        match result {
            Ok(info) if !torn_down => {
                local.apply(info.state);
                Ok((info, local, token))
            }
            Ok(_) => {
                self.detach_io(cntlid, qid, token);
                Err((
                    Status::CONNECT_INVALID_PARAMETERS,
                    ipo(true, connect_offset::CNTLID),
                ))
            }
            Err(e) => {
                self.detach_io(cntlid, qid, token);
                Err(e)
            }
        }
    }

    /// I/O statistics of a subsystem summed over every core.
    async fn query_stats(self: &Rc<Self>, subsys: usize) -> SmartCounters {
        let mut total = self.stats.borrow().get(subsys).copied().unwrap_or_default();
        for core in (0..self.peers).filter(|&c| c != self.id) {
            let from = self.id;
            if let Some(CtlMsg::QueryResp { stats, .. }) = self
                .request(core, |req| CtlMsg::Query {
                    req,
                    from,
                    cntlid: 0,
                    subsys,
                })
                .await
            {
                total.bytes_read += stats.bytes_read;
                total.bytes_written += stats.bytes_written;
                total.read_commands += stats.read_commands;
                total.write_commands += stats.write_commands;
                total.media_errors += stats.media_errors;
            }
        }
        total
    }

    /// Tell the cores serving a controller's I/O queues its new state.
    fn announce_state(self: &Rc<Self>, ctrl: &Controller) {
        let state = ctrl.next_io_state();
        for core in ctrl.io_cores() {
            self.post(
                core,
                CtlMsg::State {
                    cntlid: ctrl.cntlid,
                    state,
                    ack: None,
                },
            );
        }
    }

    /// The same, returning once every such core has applied it (false if
    /// one did not answer).
    async fn publish_state(self: &Rc<Self>, ctrl: &Controller) -> bool {
        let state = ctrl.next_io_state();
        let mut all = true;
        for core in ctrl.io_cores() {
            let (from, cntlid) = (self.id, ctrl.cntlid);
            let ack = self
                .request(core, |req| CtlMsg::State {
                    cntlid,
                    state,
                    ack: Some((req, from)),
                })
                .await;
            all &= matches!(ack, Some(CtlMsg::StateAck { .. }));
        }
        all
    }

    /// Close every I/O queue of a controller owned here, on every core.
    /// They retire: each holds its qid until it has detached.
    fn teardown_io(self: &Rc<Self>, ctrl: &Controller) {
        let live = std::mem::take(&mut *ctrl.io_queues.borrow_mut());
        let cores: std::collections::BTreeSet<usize> =
            live.values().map(|(core, _)| *core).collect();
        ctrl.retiring.borrow_mut().extend(live);
        for core in cores {
            self.post(
                core,
                CtlMsg::Teardown {
                    cntlid: ctrl.cntlid,
                },
            );
        }
    }

    /// Flush every namespace of subsystem `si` through this core's handles
    /// (a flush of one handle covers the file or device, whichever core
    /// wrote it).
    async fn flush_subsystem(&self, si: usize) -> std::io::Result<()> {
        for ns in self.namespaces.get(si).into_iter().flatten() {
            ns.backend.flush().await?;
        }
        Ok(())
    }

    fn stats(&self) -> &RefCell<Vec<SmartCounters>> {
        &self.stats
    }

    /// Log a failed I/O command in its controller's error log: here if this
    /// core owns the controller, else on its owner, waiting for the owner to
    /// answer that it is logged.
    async fn record_error(
        self: &Rc<Self>,
        cntlid: u16,
        sqid: u16,
        sqe: &crate::wire::command::Sqe,
        status: Status,
    ) {
        let Some(owner) = cntlid_owner(cntlid, self.peers) else {
            return;
        };
        let (cid, nsid, lba) = (sqe.cid(), sqe.nsid(), sqe.slba());
        if owner == self.id {
            self.log_error_here(cntlid, sqid, cid, status, nsid, lba);
            return;
        }
        let from = self.id;
        let ack = self
            .request(owner, |req| CtlMsg::Error {
                cntlid,
                sqid,
                cid,
                status,
                nsid,
                lba,
                ack: (req, from),
            })
            .await;
        if !matches!(ack, Some(CtlMsg::ErrorAck { .. })) {
            log::warn!(
                "shard {}: no answer from shard {owner} logging an error of controller {cntlid}",
                self.id
            );
        }
    }
}

impl Shard {
    /// Add an entry to the error log of controller `cntlid`, owned by this
    /// core (gone already: nothing to log).
    pub(super) fn log_error_here(
        &self,
        cntlid: u16,
        sqid: u16,
        cid: u16,
        status: Status,
        nsid: u32,
        lba: u64,
    ) {
        if let Some(o) = self.controllers.borrow().get(&cntlid) {
            o.ctrl.record_error(sqid, cid, status, nsid, lba);
        }
    }
}
