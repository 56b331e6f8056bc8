//! Reads and writes started without a task of their own: the command goes
//! to the kernel where it is parsed, and its completion, reaped by the
//! storage ring, builds its response in place, as SPDK's completion
//! callbacks do. Through a task, each completion woke the command's task
//! and resumed its future through every layer it awaited in: ~0.3 µs a
//! completion against SPDK's ~0.12, 5-7 µs of each 330-410 µs cycle of a
//! QD32 convoy on the file here (perf/README.md), by which file QD32 rows
//! trailed SPDK's.
//!
//! Only what needs nothing after the backing's own completion starts this
//! way: a Read, or a Write without FUA under a volatile write cache, on a
//! file or block device whose next attempt is AIO with `RWF_NOWAIT`, with
//! no configured bad block in its range and its blocks free now. The rest
//! (a stripe held by another command, FUA's flush, the ring's way) takes
//! the awaited way (`io::execute`), and so does an attempt the kernel
//! refused (it would have blocked), again through the ring.

use super::fabrics::Binding;
use super::queue::{count_io, Queue};
use super::registry::Registry;
use super::{io, Namespace, Response};
use crate::storage::block_lock::BlockHold;
use crate::storage::{dma_buffer, Backend, DataBuf};
use crate::wire::command::{self, Sqe};
use glommio::io::DmaBuffer;
use std::rc::Rc;

/// A Read or Write whose blocks are held, ready to go to the kernel.
pub struct Start<R: Registry> {
    ns: Rc<Namespace>,
    hold: BlockHold,
    write: bool,
    offset: u64,
    len: usize,
    registry: Rc<R>,
    subsys: usize,
}

impl<R: Registry> Queue<R> {
    /// `sqe` (prepared, for namespace `ns`, with `data` its write data) as
    /// a command that can start without a task, its blocks held from now;
    /// `None` where it takes the awaited way (the module's comment).
    pub fn startable(
        &self,
        sqe: &Sqe,
        ns: &Rc<Namespace>,
        data: Option<&DmaBuffer>,
    ) -> Option<Start<R>> {
        let write = match sqe.opcode() {
            command::io::READ => false,
            command::io::WRITE => true,
            _ => return None,
        };
        let (subsys, write_through) = match &self.state.borrow().binding {
            Some(Binding::Io { subsys, local, .. }) => (*subsys, local.write_through()),
            _ => return None,
        };
        let len = ((sqe.nlb() as u64) + 1) << ns.block_shift;
        if write && (sqe.fua() || write_through || data.map(|d| d.len() as u64) != Some(len)) {
            return None;
        }
        let offset = sqe.slba() << ns.block_shift;
        let hold = ns.hold_to_start(write, offset, len)?;
        Some(Start {
            ns: ns.clone(),
            hold,
            write,
            offset,
            len: len as usize,
            registry: self.registry.clone(),
            subsys,
        })
    }
}

impl<R: Registry + 'static> Start<R> {
    /// Give it to the kernel; `done` gets its response once it completes
    /// (counted in its subsystem's statistics, its blocks released).
    pub fn go(self, sqe: Sqe, data: Option<DmaBuffer>, done: impl FnOnce(Response) + 'static) {
        let buf = match data {
            Some(d) if self.write => d,
            _ => dma_buffer(self.len),
        };
        let ns = self.ns.clone();
        let (write, offset) = (self.write, self.offset);
        let then = Box::new(move |r, buf| self.finished(sqe, r, buf, done));
        file(&ns).start(write, offset, buf, then);
    }

    fn finished(
        self,
        sqe: Sqe,
        r: std::io::Result<usize>,
        buf: DmaBuffer,
        done: impl FnOnce(Response) + 'static,
    ) {
        match file(&self.ns).finish(self.write, r, self.len) {
            Some(r) => self.respond(&sqe, r, buf, done),
            None => {
                // Refused (it would have blocked): through the ring, its
                // blocks still held, a write whole again.
                glommio::spawn_local(async move {
                    let (r, buf) = file(&self.ns).again(self.write, self.offset, buf).await;
                    self.respond(&sqe, r, buf, done);
                })
                .detach();
            }
        }
    }

    fn respond(
        self,
        sqe: &Sqe,
        r: std::io::Result<()>,
        buf: DmaBuffer,
        done: impl FnOnce(Response),
    ) {
        drop(self.hold);
        let resp = match r {
            Ok(()) if self.write => Response::ok(),
            Ok(()) => Response {
                data: Some(DataBuf::Dma(buf)),
                ..Response::ok()
            },
            Err(e) => Response::status(io::io_status(&e, self.write)),
        };
        count_io(&*self.registry, self.subsys, sqe, &self.ns, &resp);
        done(resp);
    }
}

fn file(ns: &Namespace) -> &crate::storage::FileBackend {
    match &ns.backend {
        Backend::File(f) => f,
        _ => unreachable!("only a file or block device's commands start (`hold_to_start`)"),
    }
}
