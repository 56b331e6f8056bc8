//! One NVMe queue as the controller core sees it, whatever carries it: what
//! it is bound to (an admin queue's controller, an I/O queue's subsystem and
//! controller), the command IDs in flight, and the two phases of dispatch
//! that Linux nvmet runs in core.c: `prepare` (which command set, allowed
//! now, what data it moves) and `execute`, then `run` ends each command
//! (error log, CID, completion) through the `Transport` that carries the
//! queue, as nvmet calls its transport's `queue_response`. It also keeps
//! the submission queue's accounting: commands outstanding against SQSIZE,
//! and the SQ head each completion reports. A transport owns one per
//! connection and does the I/O around it (transport/tcp.rs).

use super::fabrics::{self, Binding};
use super::registry::Registry;
use super::{admin, io, Namespace, Outcome, Response, Xfer};
use crate::trigger::Trigger;
use crate::wire::command::{self, fctype, Cqe, Sqe};
use crate::wire::fabrics::CONNECT_DATA_LEN;
use crate::wire::status::Status;
use glommio::io::DmaBuffer;
use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::rc::Rc;

/// What Connect made of the queue.
pub struct QueueState {
    pub binding: Option<Binding>,
    /// A Connect is being executed.
    pub connecting: bool,
    pub qid: u16,
    /// SQSIZE + 1: most commands the host may have outstanding.
    pub entries: u32,
    /// Connect CATTR bit 2: reads may end with a SUCCESS C2HData.
    pub sq_flow_disabled: bool,
}

/// What the core asks of the transport that carries a queue (Linux nvmet:
/// `struct nvmet_fabrics_ops`, whose `queue_response` this is).
pub trait Transport {
    /// The transport's own part of one command (TCP: how much read data
    /// the host's SGL takes, the DMA memory charged), given back with its
    /// completion.
    type Ctx;
    /// Send the completion of `cid`, with the command's read data before
    /// it. The core has freed the CID already.
    fn queue_response(&self, cid: u16, resp: Response, ctx: Self::Ctx);
    /// A Connect made this an admin or discovery queue.
    fn admin_connected(&self) {}
}

/// What `admit` made of a command that arrived.
#[derive(Debug, PartialEq, Eq)]
pub enum Admit {
    /// Its CID is in flight now: check and run it.
    Accepted,
    /// Its CID is in flight already: answer Command ID Conflict; the
    /// command holding the CID stays tracked.
    CidConflict,
    /// The host has more commands outstanding than the queue has entries,
    /// which it never may (NVMe-oF §3.3.1): a fatal transport error.
    Overflow,
}

pub struct Queue<R: Registry> {
    pub registry: Rc<R>,
    /// The host's address, for log lines.
    pub peer: SocketAddr,
    /// The address the host reached (the discovery log describes it).
    pub local: SocketAddr,
    pub state: RefCell<QueueState>,
    /// One bit per CID in flight.
    inflight: RefCell<Box<[u64]>>,
    /// Commands admitted whose completion has not been sent yet.
    outstanding: Cell<u32>,
    /// The SQ head pointer completions report.
    sqhd: Cell<u16>,
}

impl<R: Registry> Queue<R> {
    pub fn new(registry: Rc<R>, peer: SocketAddr, local: SocketAddr) -> Queue<R> {
        Queue {
            registry,
            peer,
            local,
            state: RefCell::new(QueueState {
                binding: None,
                connecting: false,
                qid: 0,
                // Until Connect sizes the queue only the Connect itself may be in flight.
                entries: 1,
                sq_flow_disabled: false,
            }),
            inflight: RefCell::new(vec![0u64; 65536 / 64].into_boxed_slice()),
            outstanding: Cell::new(0),
            sqhd: Cell::new(0),
        }
    }

    /// A command arrived: count it against the queue's entries, take its
    /// CID, and move the SQ head past it. Every command but an `Overflow`
    /// counts until `completion_sent`.
    pub fn admit(&self, cid: u16) -> Admit {
        let entries = self.state.borrow().entries;
        if self.outstanding.get() >= entries {
            return Admit::Overflow;
        }
        self.outstanding.set(self.outstanding.get() + 1);
        if self.cid_busy(cid) && !self.forget_aer(cid) {
            return Admit::CidConflict;
        }
        self.set_cid(cid, true);
        let entries = u16::try_from(entries).expect("Connect bounds a queue's entries");
        self.sqhd.set(if entries <= 1 {
            0
        } else {
            (self.sqhd.get() + 1) % entries
        });
        Admit::Accepted
    }

    /// The transport sent a command's completion to the host: the host may
    /// use its entry again.
    pub fn completion_sent(&self) {
        let n = self.outstanding.get();
        assert!(n > 0, "a completion for no outstanding command");
        self.outstanding.set(n - 1);
    }

    /// Commands admitted and not yet answered.
    pub fn outstanding(&self) -> u32 {
        self.outstanding.get()
    }

    /// The completion queue entry for `cid`.
    pub fn cqe(&self, cid: u16, r: &Response) -> [u8; command::CQE_LEN] {
        Cqe {
            dw0: r.dw0,
            dw1: r.dw1,
            sqhd: self.sqhd.get(),
            sqid: self.state.borrow().qid,
            cid,
            status: r.status,
        }
        .encode()
    }

    /// A host that reuses the CID of its Asynchronous Event Request has
    /// given up on it: SPDK's host aborts its AERs on its own side before
    /// it shuts a controller down, then reads CC with the freed CID (a
    /// Command ID Conflict there failed its shutdown). The AER is dropped,
    /// never to complete under a CID that now means another command.
    fn forget_aer(&self, cid: u16) -> bool {
        let st = self.state.borrow();
        let Some(Binding::Admin(ctrl)) = &st.binding else {
            return false;
        };
        let mut aers = ctrl.aers.borrow_mut();
        let Some(i) = aers.iter().position(|&c| c == cid) else {
            return false;
        };
        aers.remove(i);
        self.set_cid(cid, false);
        self.outstanding.set(self.outstanding.get() - 1);
        true
    }

    pub fn cid_busy(&self, cid: u16) -> bool {
        self.inflight.borrow()[cid as usize / 64] & (1 << (cid % 64)) != 0
    }

    pub fn set_cid(&self, cid: u16, busy: bool) {
        let mut f = self.inflight.borrow_mut();
        let w = &mut f[cid as usize / 64];
        if busy {
            *w |= 1 << (cid % 64);
        } else {
            *w &= !(1 << (cid % 64));
        }
    }

    /// Phase one of dispatch: which command set, is it allowed now, what data.
    pub fn prepare(&self, sqe: &Sqe) -> Result<(Xfer, Option<Rc<Namespace>>), Status> {
        crate::nvme::check_common(sqe)?;
        let mut st = self.state.borrow_mut();
        if sqe.opcode() == command::admin::FABRICS {
            return match (sqe.fctype(), &st.binding) {
                (fctype::CONNECT, None) if !st.connecting => {
                    st.connecting = true;
                    Ok((Xfer::FromHost(CONNECT_DATA_LEN), None))
                }
                (fctype::CONNECT, _) => Err(Status::COMMAND_SEQUENCE_ERROR),
                (_, None) => Err(Status::COMMAND_SEQUENCE_ERROR),
                (fctype::PROPERTY_GET | fctype::PROPERTY_SET, Some(Binding::Admin(_))) => {
                    Ok((Xfer::None, None))
                }
                (fctype::DISCONNECT, Some(_)) => Ok((Xfer::None, None)),
                _ => Err(Status::INVALID_OPCODE),
            };
        }
        let max_io = self.registry.cfg().max_io_size;
        match &st.binding {
            None => Err(Status::COMMAND_SEQUENCE_ERROR),
            Some(Binding::Admin(ctrl)) => {
                ctrl.touch();
                admin::prepare(ctrl, sqe, max_io).map(|x| (x, None))
            }
            Some(Binding::Io { subsys, local, .. }) => {
                local.commands.set(local.commands.get() + 1);
                // I/O before CC.EN=1 (or after a reset) breaks the bring-up
                // sequence; Linux nvmet answers the same.
                if !local.ready() {
                    return Err(Status::COMMAND_SEQUENCE_ERROR);
                }
                let ns = self.registry.namespace(*subsys, sqe.nsid()).cloned();
                io::prepare(sqe, ns.as_ref(), max_io).map(|x| (x, ns))
            }
        }
    }

    /// Run a prepared command to its end: execute it, log a failure, and
    /// complete it through the transport. An AER completes only when an
    /// event comes (`Outcome::Deferred`).
    pub async fn run<T: Transport>(
        &self,
        t: &T,
        sqe: Sqe,
        ns: Option<Rc<Namespace>>,
        data: Option<DmaBuffer>,
        kill: &Rc<Trigger>,
        ctx: T::Ctx,
    ) {
        let Outcome::Done(r) = self.execute(&sqe, ns, data, kill).await else {
            return;
        };
        if !r.status.is_success() {
            // Boxed: a failure is rare and its future large (see `execute`).
            Box::pin(self.log_failure(&sqe, r.status)).await;
        } else if sqe.opcode() == command::admin::FABRICS && self.is_admin() {
            t.admin_connected();
        }
        self.complete(t, sqe.cid(), r, ctx);
    }

    /// End a command: its CID is free again and the transport sends the
    /// completion (also for commands that never ran: failed checks, a
    /// transport error, the queue closing).
    pub fn complete<T: Transport>(&self, t: &T, cid: u16, resp: Response, ctx: T::Ctx) {
        self.set_cid(cid, false);
        t.queue_response(cid, resp, ctx);
    }

    pub fn is_admin(&self) -> bool {
        matches!(self.state.borrow().binding, Some(Binding::Admin(_)))
    }

    /// Phase two: run the command.
    pub async fn execute(
        &self,
        sqe: &Sqe,
        ns: Option<Rc<Namespace>>,
        data: Option<DmaBuffer>,
        kill: &Rc<Trigger>,
    ) -> Outcome {
        // Fabrics and admin commands are boxed so that an I/O command's
        // future is not as large as theirs (`io::execute`).
        if sqe.opcode() == command::admin::FABRICS {
            return Box::pin(self.execute_fabrics(sqe, data, kill)).await.into();
        }
        let binding = {
            let st = self.state.borrow();
            match &st.binding {
                Some(Binding::Admin(c)) => Ok(c.clone()),
                Some(Binding::Io { subsys, local, .. }) => Err((*subsys, local.write_through())),
                None => return Status::COMMAND_SEQUENCE_ERROR.into(),
            }
        };
        match binding {
            Ok(ctrl) => {
                Box::pin(admin::execute(&self.registry, &ctrl, sqe, data, self.local)).await
            }
            Err((subsys, write_through)) => {
                let Some(ns) = ns else {
                    return Status::INVALID_NAMESPACE.into();
                };
                let r = io::execute(sqe, &ns, data, write_through).await;
                count_io(&*self.registry, subsys, sqe, &ns, &r);
                r.into()
            }
        }
    }

    async fn execute_fabrics(
        &self,
        sqe: &Sqe,
        data: Option<DmaBuffer>,
        kill: &Rc<Trigger>,
    ) -> Response {
        match sqe.fctype() {
            fctype::CONNECT => {
                let Some(d) = data else {
                    return Response::status(Status::DATA_SGL_LENGTH_INVALID);
                };
                let r = fabrics::connect(&self.registry, sqe, d.as_bytes(), kill).await;
                let mut st = self.state.borrow_mut();
                st.connecting = false;
                match r {
                    Ok(c) => {
                        let cntlid = match &c.binding {
                            Binding::Admin(ctrl) => ctrl.cntlid,
                            Binding::Io { cntlid, .. } => *cntlid,
                        };
                        st.qid = c.qid;
                        st.entries = c.entries;
                        st.sq_flow_disabled = c.sq_flow_disabled;
                        st.binding = Some(c.binding);
                        log::info!(
                            "{}: queue {} of controller {cntlid} connected on core {}",
                            self.peer,
                            c.qid,
                            self.registry.core()
                        );
                        Response::dw0(cntlid as u32)
                    }
                    Err(r) => r,
                }
            }
            fctype::PROPERTY_GET | fctype::PROPERTY_SET => {
                let ctrl = match &self.state.borrow().binding {
                    Some(Binding::Admin(c)) => c.clone(),
                    _ => return Response::status(Status::COMMAND_SEQUENCE_ERROR),
                };
                if sqe.fctype() == fctype::PROPERTY_GET {
                    fabrics::property_get(&ctrl, sqe)
                } else {
                    fabrics::property_set(&self.registry, &ctrl, sqe)
                }
            }
            fctype::DISCONNECT => Response {
                close_after: true,
                ..Response::ok()
            },
            _ => Response::status(Status::INVALID_OPCODE),
        }
    }

    /// Failed commands are logged (never successful ones: no line per I/O)
    /// and go to their controller's error log, which may live on another core.
    /// Log a failed command, and add it to its controller's error log before
    /// the command completes.
    pub async fn log_failure(&self, sqe: &Sqe, s: Status) {
        let (qid, io_cntlid) = {
            let st = self.state.borrow();
            log::info!(
                "{}: queue {} command {:?} failed: {s}",
                self.peer,
                st.qid,
                sqe
            );
            match &st.binding {
                Some(Binding::Admin(ctrl)) => {
                    ctrl.record_error(0, sqe.cid(), s, sqe.nsid(), 0);
                    return;
                }
                Some(Binding::Io { cntlid, .. }) => (st.qid, *cntlid),
                None => return,
            }
        };
        self.registry.record_error(io_cntlid, qid, sqe, s).await;
    }
}

/// Count a finished I/O command in its subsystem's statistics.
pub(super) fn count_io<R: Registry>(
    registry: &R,
    subsys: usize,
    sqe: &Sqe,
    ns: &Namespace,
    r: &Response,
) {
    let mut stats = registry.stats().borrow_mut();
    let Some(s) = stats.get_mut(subsys) else {
        return;
    };
    let bytes = ((sqe.nlb() as u64) + 1) << ns.block_shift;
    match sqe.opcode() {
        command::io::READ => {
            s.read_commands += 1;
            s.bytes_read += bytes;
        }
        command::io::WRITE => {
            s.write_commands += 1;
            s.bytes_written += bytes;
        }
        _ => {}
    }
    if r.status.sct() == 2 {
        s.media_errors += 1;
    }
}
