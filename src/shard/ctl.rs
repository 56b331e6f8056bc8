//! The control plane between shards: the messages, their delivery (a
//! glommio channel mesh; to itself, a task of its own), request/reply
//! matching, and what a shard does with each message.

use super::Shard;
use crate::balance::Seat;
use crate::nvme::io_ctrl::{AttachInfo, IoState};
use crate::wire::log_page::SmartCounters;
use crate::wire::status::Status;
use glommio::channels::local_channel;
use std::os::fd::OwnedFd;
use std::rc::Rc;
use std::time::Duration;

/// Control messages between shards.
#[derive(Debug)]
pub enum CtlMsg {
    /// An I/O queue's Connect landed on `from` for a controller owned by the receiver.
    AttachIo {
        req: u64,
        from: usize,
        cntlid: u16,
        qid: u16,
        /// Names this queue among all queues that ever had this qid.
        token: u64,
        hostnqn: String,
        hostid: [u8; 16],
        subnqn: String,
    },
    AttachIoResp {
        req: u64,
        result: Result<AttachInfo, (Status, u32)>,
    },
    /// An I/O queue closed (only the queue `token` names: a new queue with
    /// the same qid may already be attached).
    DetachIo {
        cntlid: u16,
        qid: u16,
        token: u64,
    },
    /// Close every I/O queue of this controller served by the receiver.
    Teardown {
        cntlid: u16,
    },
    /// The controller's state that its I/O queues follow changed; with
    /// `ack`, the receiver answers `StateAck` once it applies.
    State {
        cntlid: u16,
        state: IoState,
        ack: Option<(u64, usize)>,
    },
    StateAck {
        req: u64,
    },
    /// A command failed on an I/O queue: add it to the controller's error
    /// log, then answer `ErrorAck` to `ack` (request, core).
    Error {
        cntlid: u16,
        sqid: u16,
        cid: u16,
        status: Status,
        nsid: u32,
        lba: u64,
        ack: (u64, usize),
    },
    ErrorAck {
        req: u64,
    },
    /// Keep-alive and statistics query.
    Query {
        req: u64,
        from: usize,
        cntlid: u16,
        subsys: usize,
    },
    QueryResp {
        req: u64,
        /// Milliseconds since the last I/O of the controller here, if it has queues here.
        idle_ms: Option<u64>,
        stats: SmartCounters,
    },
    /// A connection another core accepted, for the receiver to serve
    /// (`balance`).
    Connection(Handoff),
}

/// An accepted socket on its way to the core that will serve it.
#[derive(Debug)]
pub struct Handoff {
    pub fd: OwnedFd,
    pub seat: Seat,
}

impl Shard {
    /// Receive loop for messages from one peer.
    pub fn spawn_receivers(
        self: &Rc<Self>,
        mut receivers: glommio::channels::channel_mesh::Receivers<CtlMsg>,
    ) {
        for (_peer, rx) in receivers.streams() {
            let me = self.clone();
            glommio::spawn_local(async move {
                while let Some(msg) = rx.recv().await {
                    me.handle(msg).await;
                }
            })
            .detach();
        }
    }

    pub(super) async fn send(self: &Rc<Self>, to: usize, msg: CtlMsg) {
        if to == self.id {
            // Local delivery: handle on a fresh task, as a remote message would be.
            let me = self.clone();
            glommio::spawn_local(async move { me.handle(msg).await }).detach();
        } else if let Err(e) = self.senders.send_to(to, msg).await {
            log::error!(
                "shard {}: control message to shard {to} lost: {e:?}",
                self.id
            );
        }
    }

    /// Fire and forget, from synchronous code.
    pub fn post(self: &Rc<Self>, to: usize, msg: CtlMsg) {
        let me = self.clone();
        glommio::spawn_local(async move { me.send(to, msg).await }).detach();
    }

    pub(super) async fn request(
        self: &Rc<Self>,
        to: usize,
        make: impl FnOnce(u64) -> CtlMsg,
    ) -> Option<CtlMsg> {
        let req = self.next_req.get();
        self.next_req.set(req + 1);
        let (tx, rx) = local_channel::new_bounded(1);
        self.pending.borrow_mut().insert(req, tx);
        self.send(to, make(req)).await;
        let r = futures_lite::future::or(rx.recv(), async {
            glommio::timer::sleep(Duration::from_secs(5)).await;
            None
        })
        .await;
        self.pending.borrow_mut().remove(&req);
        r
    }

    pub(super) fn reply(&self, req: u64, msg: CtlMsg) {
        if let Some(tx) = self.pending.borrow_mut().remove(&req) {
            let _ = tx.try_send(msg);
        }
    }

    pub(super) async fn handle(self: &Rc<Self>, msg: CtlMsg) {
        match msg {
            CtlMsg::AttachIo {
                req,
                from,
                cntlid,
                qid,
                token,
                hostnqn,
                hostid,
                subnqn,
            } => {
                let result =
                    self.check_attach(from, token, cntlid, qid, &hostnqn, &hostid, &subnqn);
                if let (Ok(_), Some(d)) = (&result, crate::fault::attach_reply_delay()) {
                    log::warn!(
                        "fault injection: attach reply for controller {cntlid} queue {qid} delayed"
                    );
                    glommio::timer::sleep(d).await;
                }
                self.send(from, CtlMsg::AttachIoResp { req, result }).await;
            }
            CtlMsg::Connection(h) => {
                // Unbounded and never closed while the shard lives; a
                // failure only drops the socket (closing it).
                let _ = self.handed_tx.try_send(h);
            }
            CtlMsg::AttachIoResp { req, .. }
            | CtlMsg::QueryResp { req, .. }
            | CtlMsg::StateAck { req }
            | CtlMsg::ErrorAck { req } => self.reply(req, msg),
            CtlMsg::DetachIo { cntlid, qid, token } => self.detached(cntlid, qid, token),
            CtlMsg::Teardown { cntlid } => {
                if let Some(l) = self.io_ctrls.borrow_mut().remove(&cntlid) {
                    for (_, _, kill) in l.queues.borrow().iter() {
                        kill.fire();
                    }
                }
            }
            CtlMsg::Error {
                cntlid,
                sqid,
                cid,
                status,
                nsid,
                lba,
                ack: (req, from),
            } => {
                self.log_error_here(cntlid, sqid, cid, status, nsid, lba);
                self.send(from, CtlMsg::ErrorAck { req }).await;
            }
            CtlMsg::State { cntlid, state, ack } => {
                if let Some(l) = self.io_ctrls.borrow().get(&cntlid) {
                    l.apply(state);
                }
                if let Some((req, from)) = ack {
                    self.send(from, CtlMsg::StateAck { req }).await;
                }
            }
            CtlMsg::Query {
                req,
                from,
                cntlid,
                subsys,
            } => {
                let idle_ms = self
                    .io_ctrls
                    .borrow()
                    .get(&cntlid)
                    .map(|l| l.idle().as_millis() as u64);
                let stats = self.stats.borrow().get(subsys).copied().unwrap_or_default();
                self.send(
                    from,
                    CtlMsg::QueryResp {
                        req,
                        idle_ms,
                        stats,
                    },
                )
                .await;
            }
        }
    }
}
