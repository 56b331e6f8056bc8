//! Fabrics commands (NVMe-oF 1.1 §3): Connect, Property Get/Set, Disconnect.

use super::controller::{CcEffect, Controller, SubsysRef};
use super::io_ctrl::LocalIoCtrl;
use super::registry::Registry;
use super::Response;
use crate::nvme::discovery::ADMIN_MAX_SQ_SIZE as ADMIN_QUEUE_ENTRIES;
use crate::trigger::Trigger;
use crate::wire::command::Sqe;
use crate::wire::fabrics::{
    connect_offset, invalid_parameter_dw0, ConnectCmd, ConnectData, PropertyCmd,
    CATTR_DISABLE_SQ_FLOW, CNTLID_DYNAMIC, DISCOVERY_NQN,
};
use crate::wire::status::Status;
use std::rc::Rc;

/// What a queue became by its Connect.
pub enum Binding {
    Admin(Rc<Controller>),
    Io {
        cntlid: u16,
        subsys: usize,
        local: Rc<LocalIoCtrl>,
        /// This queue's attachment, for its detach.
        token: u64,
    },
}

pub struct Connected {
    pub qid: u16,
    /// Queue entries (SQSIZE + 1).
    pub entries: u32,
    pub sq_flow_disabled: bool,
    pub binding: Binding,
}

fn invalid(data: bool, offset: u16) -> Response {
    Response {
        dw0: invalid_parameter_dw0(data, offset),
        ..Response::status(Status::CONNECT_INVALID_PARAMETERS)
    }
}

/// The queue's entries (SQSIZE + 1) if the host may have that many.
// (The refusal is the Connect response itself, once per connection.)
#[allow(clippy::result_large_err)]
fn queue_entries(shard: &Rc<impl Registry>, cmd: &ConnectCmd) -> Result<u32, Response> {
    let entries = cmd.sqsize as u32 + 1;
    // CAP.MQES bounds I/O queues only; admin queues get what discovery
    // advertises (ASQSZ) or the I/O depth, whichever is larger (Linux always
    // asks for 32).
    let max = if cmd.qid == 0 {
        (shard.cfg().queue_depth as u32).max(ADMIN_QUEUE_ENTRIES as u32)
    } else {
        shard.cfg().queue_depth as u32
    };
    if cmd.sqsize == 0 || entries > max {
        return Err(invalid(false, connect_offset::SQSIZE));
    }
    Ok(entries)
}

/// The subsystem Connect names, if it exists and lets this host in.
#[allow(clippy::result_large_err)]
fn subsystem(shard: &Rc<impl Registry>, d: &ConnectData) -> Result<SubsysRef, Response> {
    if d.subnqn == DISCOVERY_NQN {
        return Ok(SubsysRef::Discovery);
    }
    let Some((i, s)) = shard.cfg().subsystem(&d.subnqn) else {
        log::warn!("connect refused: unknown subsystem {}", d.subnqn);
        return Err(invalid(true, connect_offset::SUBNQN));
    };
    if !s.host_allowed(&d.hostnqn) {
        log::warn!(
            "connect refused: host {:?} is not allowed on {}",
            d.hostnqn,
            d.subnqn
        );
        return Err(Response {
            dw0: invalid_parameter_dw0(true, connect_offset::HOSTNQN),
            ..Response::status(Status::CONNECT_INVALID_HOST)
        });
    }
    Ok(SubsysRef::Nvm(i))
}

/// Connect (§3.3). `kill` closes this queue when its controller goes away.
pub async fn connect(
    shard: &Rc<impl Registry>,
    sqe: &Sqe,
    data: &[u8],
    kill: &Rc<Trigger>,
) -> Result<Connected, Response> {
    let cmd = ConnectCmd::decode(sqe);
    if cmd.recfmt != 0 {
        return Err(Response::status(Status::CONNECT_INCOMPATIBLE_FORMAT));
    }
    let d = ConnectData::decode(data).map_err(|b| invalid(true, b.0))?;
    let entries = queue_entries(shard, &cmd)?;
    let subsys = subsystem(shard, &d)?;
    let sq_flow_disabled = cmd.cattr & CATTR_DISABLE_SQ_FLOW != 0;
    if cmd.qid == 0 {
        if d.cntlid != CNTLID_DYNAMIC {
            // Only the dynamic controller model is offered (FCATT 0).
            return Err(invalid(true, connect_offset::CNTLID));
        }
        let ctrl = shard
            .create_controller(subsys, d.hostnqn, d.hostid, cmd.kato_ms, kill.clone())
            .map_err(Response::status)?;
        return Ok(Connected {
            qid: 0,
            entries,
            sq_flow_disabled,
            binding: Binding::Admin(ctrl),
        });
    }
    if subsys == SubsysRef::Discovery {
        return Err(invalid(false, connect_offset::QID));
    }
    let (info, local, token) = shard
        .attach_io(
            d.cntlid,
            cmd.qid,
            &d.hostnqn,
            d.hostid,
            &d.subnqn,
            kill.clone(),
        )
        .await
        .map_err(|(s, dw0)| Response {
            dw0,
            ..Response::status(s)
        })?;
    log::info!(
        "controller {}: I/O queue {} connected on core {} ({} entries)",
        d.cntlid,
        cmd.qid,
        shard.core(),
        entries
    );
    Ok(Connected {
        qid: cmd.qid,
        entries,
        sq_flow_disabled,
        binding: Binding::Io {
            cntlid: d.cntlid,
            subsys: info.subsys,
            local,
            token,
        },
    })
}

pub fn property_get(ctrl: &Controller, sqe: &Sqe) -> Response {
    if !PropertyCmd::attrib_valid(sqe) {
        return Response::status(Status::INVALID_FIELD);
    }
    let p = PropertyCmd::decode(sqe);
    match ctrl.property_get(p.offset, p.size8) {
        // An 8-byte value spans DW0 and DW1 of the completion.
        Ok(v) => Response::dw0(v as u32).with_dw1((v >> 32) as u32),
        Err(s) => Response::status(s),
    }
}

pub fn property_set(shard: &Rc<impl Registry>, ctrl: &Rc<Controller>, sqe: &Sqe) -> Response {
    if !PropertyCmd::attrib_valid(sqe) {
        return Response::status(Status::INVALID_FIELD);
    }
    let p = PropertyCmd::decode(sqe);
    match ctrl.property_set(p.offset, p.size8, p.value) {
        Ok(CcEffect::None) => Response::ok(),
        Ok(CcEffect::Enabled) => {
            log::info!("controller {} enabled", ctrl.cntlid);
            shard.announce_state(ctrl);
            Response::ok()
        }
        Ok(CcEffect::Shutdown) => {
            log::info!(
                "controller {} shutting down: closing its I/O queues, flushing",
                ctrl.cntlid
            );
            shard.teardown_io(ctrl);
            // The host polls CSTS.SHST; it reads complete once every
            // namespace of the subsystem is flushed (§3.6.2).
            let (shard, ctrl) = (shard.clone(), ctrl.clone());
            glommio::spawn_local(async move {
                let flushed = match ctrl.subsys {
                    SubsysRef::Nvm(si) => match shard.flush_subsystem(si).await {
                        Ok(()) => true,
                        Err(e) => {
                            log::error!(
                                "controller {}: flush at shutdown failed: {e}",
                                ctrl.cntlid
                            );
                            false
                        }
                    },
                    SubsysRef::Discovery => true,
                };
                ctrl.shutdown_done(flushed);
            })
            .detach();
            Response::ok()
        }
        Ok(CcEffect::Reset) => {
            log::info!(
                "controller {} disabled or shut down: closing its I/O queues",
                ctrl.cntlid
            );
            shard.teardown_io(ctrl);
            Response::ok()
        }
        Err(s) => Response::status(s),
    }
}
