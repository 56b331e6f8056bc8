//! Admin commands (NVMe Base 2.0 §5): Identify, Get Log Page, Set/Get
//! Features, Keep Alive, Asynchronous Event Request, Abort.

use super::controller::{Controller, SubsysRef, ABORT_LIMIT, AER_LIMIT, ERROR_LOG_ENTRIES};
use super::registry::Registry;
use super::{discovery, Outcome, Response, Xfer};
use crate::config::FIRMWARE_REVISION;
use crate::wire::command::{admin, io, Sqe};
use crate::wire::identify::{self, cns, ControllerInfo, ControllerType};
use crate::wire::log_page::{self, lid, GetLogPage};
use crate::wire::status::Status;
use glommio::io::DmaBuffer;
use std::net::SocketAddr;
use std::rc::Rc;

/// Feature identifiers served.
pub mod fid {
    pub const ARBITRATION: u8 = 0x01;
    pub const POWER_MANAGEMENT: u8 = 0x02;
    pub const TEMPERATURE_THRESHOLD: u8 = 0x04;
    pub const ERROR_RECOVERY: u8 = 0x05;
    pub const VOLATILE_WRITE_CACHE: u8 = 0x06;
    pub const NUMBER_OF_QUEUES: u8 = 0x07;
    pub const ASYNC_EVENT_CONFIG: u8 = 0x0B;
    pub const KEEP_ALIVE_TIMER: u8 = 0x0F;
    pub const HOST_IDENTIFIER: u8 = 0x81;
}

const HOST_ID_LEN: usize = 16;

/// Phase one: is the opcode served here, and what data does it move?
pub fn prepare(ctrl: &Controller, sqe: &Sqe, max_io_size: u32) -> Result<Xfer, Status> {
    let discovery = ctrl.is_discovery();
    let op = sqe.opcode();
    let known = match op {
        admin::IDENTIFY
        | admin::GET_LOG_PAGE
        | admin::SET_FEATURES
        | admin::GET_FEATURES
        | admin::KEEP_ALIVE
        | admin::ASYNC_EVENT_REQUEST => true,
        admin::ABORT => !discovery,
        _ => false,
    };
    if !known {
        return Err(Status::INVALID_OPCODE);
    }
    // Admin commands other than Fabrics need an enabled controller (§3.5.1).
    if !ctrl.ready() {
        return Err(Status::COMMAND_SEQUENCE_ERROR);
    }
    Ok(match op {
        admin::IDENTIFY => Xfer::ToHost(identify::IDENTIFY_LEN),
        admin::GET_LOG_PAGE => {
            let g = GetLogPage::decode(sqe);
            if g.len > max_io_size as usize {
                return Err(Status::INVALID_FIELD);
            }
            Xfer::ToHost(g.len)
        }
        admin::GET_FEATURES if sqe.cdw(10) as u8 == fid::HOST_IDENTIFIER => {
            Xfer::ToHost(HOST_ID_LEN)
        }
        admin::SET_FEATURES if sqe.cdw(10) as u8 == fid::HOST_IDENTIFIER => {
            Xfer::FromHost(HOST_ID_LEN)
        }
        _ => Xfer::None,
    })
}

/// Phase two.
pub async fn execute(
    shard: &Rc<impl Registry>,
    ctrl: &Rc<Controller>,
    sqe: &Sqe,
    _data: Option<DmaBuffer>,
    local: SocketAddr,
) -> Outcome {
    ctrl.touch();
    match sqe.opcode() {
        admin::IDENTIFY => identify(shard.as_ref(), ctrl, sqe).into(),
        admin::GET_LOG_PAGE => get_log_page(shard, ctrl, sqe, local).await.into(),
        admin::SET_FEATURES if sqe.cdw(10) as u8 == fid::VOLATILE_WRITE_CACHE => {
            set_write_cache(shard, ctrl, sqe).await.into()
        }
        admin::SET_FEATURES => set_features(ctrl, sqe).into(),
        admin::GET_FEATURES => get_features(ctrl, sqe).into(),
        admin::KEEP_ALIVE => Response::ok().into(),
        admin::ABORT => Response::dw0(1).into(), // bit 0: command not aborted
        admin::ASYNC_EVENT_REQUEST => {
            let mut aers = ctrl.aers.borrow_mut();
            if aers.len() >= AER_LIMIT {
                return Status::ASYNC_EVENT_LIMIT_EXCEEDED.into();
            }
            aers.push_back(sqe.cid());
            Outcome::Deferred
        }
        _ => Status::INVALID_OPCODE.into(),
    }
}

pub fn controller_info(shard: &impl Registry, ctrl: &Controller) -> ControllerInfo {
    let cfg = shard.cfg();
    let (serial, model, subnqn, nn, ctype) = match ctrl.subsys {
        SubsysRef::Nvm(i) => {
            let s = &cfg.subsystems[i];
            (
                s.serial.clone(),
                s.model.clone(),
                s.nqn.clone(),
                s.nn(),
                ControllerType::Io,
            )
        }
        // The discovery controller speaks for the whole target: the serial
        // and model it reports are the first subsystem's (or the defaults).
        SubsysRef::Discovery => (
            cfg.subsystems.first().map_or_else(
                || crate::config::default_serial(crate::wire::fabrics::DISCOVERY_NQN),
                |s| s.serial.clone(),
            ),
            cfg.subsystems.first().map_or_else(
                || crate::config::DEFAULT_MODEL.to_string(),
                |s| s.model.clone(),
            ),
            crate::wire::fabrics::DISCOVERY_NQN.to_string(),
            0,
            ControllerType::Discovery,
        ),
    };
    ControllerInfo {
        serial,
        model,
        firmware: FIRMWARE_REVISION.to_string(),
        cntlid: ctrl.cntlid,
        version: super::controller::NVME_VERSION_1_4,
        ctype,
        mdts: cfg.mdts(),
        maxcmd: cfg.queue_depth,
        nn,
        subnqn,
        kas: ctrl.kas(),
        in_capsule_data: cfg.in_capsule_data,
        volatile_write_cache: ctrl.vwc_present,
        acl: ABORT_LIMIT - 1,
        aerl: (AER_LIMIT - 1) as u8,
        elpe: (ERROR_LOG_ENTRIES - 1) as u8,
    }
}

fn identify(shard: &impl Registry, ctrl: &Controller, sqe: &Sqe) -> Response {
    let cns_v = sqe.cdw(10) as u8;
    let nsid = sqe.nsid();
    let subsys = match ctrl.subsys {
        SubsysRef::Nvm(i) => Some(i),
        SubsysRef::Discovery => None,
    };
    if cns_v == cns::CONTROLLER {
        return Response::data(identify::controller(&controller_info(shard, ctrl)));
    }
    let Some(si) = subsys else {
        return Response::status(Status::INVALID_FIELD);
    };
    let nn = shard.cfg().subsystems[si].nn();
    match cns_v {
        cns::NAMESPACE => {
            if nsid == 0 || nsid > nn {
                return Response::status(Status::INVALID_NAMESPACE);
            }
            match shard.namespace(si, nsid) {
                Some(ns) => Response::data(identify::namespace(&ns.info())),
                // An inactive NSID within NN reads as zeroes (§5.17.2.1).
                None => Response::data(vec![0; identify::IDENTIFY_LEN]),
            }
        }
        cns::ACTIVE_NS_LIST => {
            if nsid >= 0xFFFF_FFFE {
                return Response::status(Status::INVALID_NAMESPACE);
            }
            let ids: Vec<u32> = shard.cfg().subsystems[si]
                .namespaces
                .iter()
                .map(|n| n.nsid)
                .collect();
            Response::data(identify::active_ns_list(&ids, nsid))
        }
        // I/O command set specific Identify Controller for the NVM set (CSI
        // 0): all limits zero, meaning none beyond MDTS and the commands' own
        // fields (NVM Command Set 1.0 §4.1.5.3). That is honest for WZSL,
        // DMRL, DMRSL and DMSL: Write Zeroes and Deallocate of any size run
        // in the executor's blocking pool or io_uring, never stalling a core.
        cns::CTRL_CSI if sqe.cdw(11) >> 24 == 0 => Response::data(vec![0; identify::IDENTIFY_LEN]),
        cns::NS_DESCRIPTORS => match shard.namespace(si, nsid) {
            Some(ns) => Response::data(identify::ns_descriptors(&ns.info())),
            None => Response::status(Status::INVALID_NAMESPACE),
        },
        _ => Response::status(Status::INVALID_FIELD),
    }
}

async fn get_log_page(
    shard: &Rc<impl Registry>,
    ctrl: &Controller,
    sqe: &Sqe,
    local: SocketAddr,
) -> Response {
    let g = GetLogPage::decode(sqe);
    let page = match (g.lid, ctrl.subsys) {
        (lid::DISCOVERY, SubsysRef::Discovery) => {
            discovery::log_page(shard.cfg(), &ctrl.hostnqn, local)
        }
        (lid::ERROR, _) => {
            let e: Vec<_> = ctrl.errors.borrow().iter().copied().collect();
            log_page::error_log(&e, ERROR_LOG_ENTRIES)
        }
        (lid::SMART, SubsysRef::Nvm(si)) => {
            let mut c = shard.query_stats(si).await;
            c.error_log_entries = ctrl.error_count.get();
            c.power_on_hours = shard.uptime().as_secs() / 3600;
            log_page::smart_log(&c)
        }
        (lid::FIRMWARE_SLOT, SubsysRef::Nvm(_)) => log_page::firmware_slot_log(FIRMWARE_REVISION),
        (lid::CHANGED_NS, SubsysRef::Nvm(_)) => log_page::changed_ns_log(&[]),
        (lid::COMMANDS_EFFECTS, SubsysRef::Nvm(_)) => log_page::commands_effects_log(
            &[
                admin::GET_LOG_PAGE,
                admin::IDENTIFY,
                admin::ABORT,
                admin::SET_FEATURES,
                admin::GET_FEATURES,
                admin::ASYNC_EVENT_REQUEST,
                admin::KEEP_ALIVE,
            ],
            &[
                (io::FLUSH, false),
                (io::WRITE, true),
                (io::READ, false),
                (io::COMPARE, false),
                (io::WRITE_ZEROES, true),
                (io::DATASET_MANAGEMENT, true),
            ],
        ),
        _ => return Response::status(Status::INVALID_LOG_PAGE),
    };
    let Some(w) = log_page::window(&page, g.offset, g.len) else {
        return Response::status(Status::INVALID_FIELD);
    };
    // Bytes past the end of the page read as zeroes.
    let mut out = vec![0u8; g.len];
    out[..w.len()].copy_from_slice(w);
    Response::data(out)
}

fn feature_served(ctrl: &Controller, f: u8) -> bool {
    if ctrl.is_discovery() {
        return matches!(f, fid::ASYNC_EVENT_CONFIG | fid::KEEP_ALIVE_TIMER);
    }
    matches!(
        f,
        fid::ARBITRATION
            | fid::POWER_MANAGEMENT
            | fid::TEMPERATURE_THRESHOLD
            | fid::ERROR_RECOVERY
            | fid::VOLATILE_WRITE_CACHE
            | fid::NUMBER_OF_QUEUES
            | fid::ASYNC_EVENT_CONFIG
            | fid::KEEP_ALIVE_TIMER
            | fid::HOST_IDENTIFIER
    )
}

fn set_features(ctrl: &Controller, sqe: &Sqe) -> Response {
    let cdw10 = sqe.cdw(10);
    let f = cdw10 as u8;
    let v = sqe.cdw(11);
    if !feature_served(ctrl, f) {
        return Response::status(Status::INVALID_FIELD);
    }
    if cdw10 & (1 << 31) != 0 {
        return Response::status(Status::FEATURE_NOT_SAVEABLE);
    }
    let mut feat = ctrl.features.borrow_mut();
    match f {
        fid::ARBITRATION => feat.arbitration = v,
        fid::POWER_MANAGEMENT => {
            // Only power state 0 exists (NPSS = 0).
            if v & 0x1F != 0 {
                return Response::status(Status::INVALID_FIELD);
            }
            feat.power_management = v;
        }
        fid::TEMPERATURE_THRESHOLD => {
            // Composite temperature (TMPSEL 0), over or under threshold.
            if (v >> 16) & 0xF != 0 || (v >> 20) & 0x3 > 1 {
                return Response::status(Status::INVALID_FIELD);
            }
            if (v >> 20) & 0x3 == 0 {
                feat.temperature_threshold = v & 0xFFFF;
            }
        }
        fid::ERROR_RECOVERY => {
            if v & (1 << 16) != 0 {
                // DULBE needs deallocated-block errors, which we do not report.
                return Response::status(Status::INVALID_FIELD);
            }
            feat.error_recovery = v & 0xFFFF;
        }
        fid::NUMBER_OF_QUEUES => {
            if !ctrl.io_queues.borrow().is_empty() {
                return Response::status(Status::COMMAND_SEQUENCE_ERROR);
            }
            let (nsq, ncq) = (v & 0xFFFF, v >> 16);
            if nsq == 0xFFFF || ncq == 0xFFFF {
                return Response::status(Status::INVALID_FIELD);
            }
            let max = (ctrl.max_io_queues - 1) as u32;
            let granted = nsq.min(max) | (ncq.min(max) << 16);
            feat.number_of_queues = Some(granted);
            return Response::dw0(granted);
        }
        fid::ASYNC_EVENT_CONFIG => feat.async_event_config = v,
        fid::KEEP_ALIVE_TIMER => ctrl.kato_ms.set(v),
        // Fabrics hosts give their identifier in Connect (NVMe-oF 1.1 §3.3).
        fid::HOST_IDENTIFIER => return Response::status(Status::COMMAND_SEQUENCE_ERROR),
        _ => return Response::status(Status::INVALID_FIELD),
    }
    Response::ok()
}

/// Set Features, Volatile Write Cache (NVMe Base 2.0 §5.27.1.4). Turning
/// it off makes every later write durable before its completion (the I/O
/// queues write through, on every core, before this completes) and flushes
/// what earlier writes left in the cache. Without a cache (RAM and null
/// namespaces only) there is nothing to set.
async fn set_write_cache(shard: &Rc<impl Registry>, ctrl: &Rc<Controller>, sqe: &Sqe) -> Response {
    if !ctrl.vwc_present || ctrl.is_discovery() {
        return Response::status(Status::INVALID_FIELD);
    }
    if sqe.cdw(10) & (1 << 31) != 0 {
        return Response::status(Status::FEATURE_NOT_SAVEABLE);
    }
    let on = sqe.cdw(11) & 1 != 0;
    ctrl.features.borrow_mut().volatile_write_cache = on;
    if !shard.publish_state(ctrl).await {
        return Response::status(Status::INTERNAL_ERROR);
    }
    if let SubsysRef::Nvm(si) = ctrl.subsys {
        if !on {
            if let Err(e) = shard.flush_subsystem(si).await {
                log::error!("controller {}: flush for VWC off failed: {e}", ctrl.cntlid);
                return Response::status(super::io::io_status(&e, true));
            }
        }
    }
    log::info!(
        "controller {}: volatile write cache {}",
        ctrl.cntlid,
        if on {
            "on"
        } else {
            "off (writes are durable before they complete)"
        }
    );
    Response::ok()
}

fn get_features(ctrl: &Controller, sqe: &Sqe) -> Response {
    let cdw10 = sqe.cdw(10);
    let f = cdw10 as u8;
    let sel = (cdw10 >> 8) & 0x7;
    if !feature_served(ctrl, f) {
        return Response::status(Status::INVALID_FIELD);
    }
    if sel == 3 {
        // Supported capabilities: changeable, not saveable, not per namespace.
        let changeable = match f {
            fid::HOST_IDENTIFIER => false,
            fid::VOLATILE_WRITE_CACHE => ctrl.vwc_present,
            _ => true,
        };
        return Response::dw0((changeable as u32) << 2);
    }
    if sel > 3 {
        return Response::status(Status::INVALID_FIELD);
    }
    let defaults = super::controller::Features::defaults(ctrl.vwc_present);
    let current = ctrl.features.borrow();
    let feat = if sel == 0 { &*current } else { &defaults };
    let max = (ctrl.max_io_queues - 1) as u32;
    let dw0 = match f {
        fid::ARBITRATION => feat.arbitration,
        fid::POWER_MANAGEMENT => feat.power_management,
        fid::TEMPERATURE_THRESHOLD => {
            let v = sqe.cdw(11);
            if (v >> 16) & 0xF != 0 || (v >> 20) & 0x3 > 1 {
                return Response::status(Status::INVALID_FIELD);
            }
            if (v >> 20) & 0x3 == 0 {
                feat.temperature_threshold
            } else {
                0
            }
        }
        fid::ERROR_RECOVERY => feat.error_recovery,
        fid::VOLATILE_WRITE_CACHE => feat.volatile_write_cache as u32,
        fid::NUMBER_OF_QUEUES => feat.number_of_queues.unwrap_or(max | (max << 16)),
        fid::ASYNC_EVENT_CONFIG => feat.async_event_config,
        fid::KEEP_ALIVE_TIMER => ctrl.kato_ms.get(),
        fid::HOST_IDENTIFIER => {
            // Only the 128-bit identifier exists (EXHID must be set).
            if sqe.cdw(11) & 1 == 0 {
                return Response::status(Status::INVALID_FIELD);
            }
            return Response::data(ctrl.hostid.to_vec());
        }
        _ => return Response::status(Status::INVALID_FIELD),
    };
    Response::dw0(dw0)
}
