//! A checked command's way to execution: the DMA memory for its data, then
//! its R2T or its run (inline where it cannot wait, else a task of its own).

use super::{Conn, DoneCtx, H2cXfer};
use crate::nvme::{Namespace, Response};
use crate::storage::{dma_buffer, Charge};
use crate::transport::rx::{data_path, DataPath};
use crate::transport::writer::Out;
use crate::wire::command::Sqe;
use crate::wire::pdu::DataHeader;
use crate::wire::status::Status;
use glommio::io::DmaBuffer;
use std::future::Future;
use std::rc::Rc;
use std::task::{Context, Waker};

/// What a checked command does next.
pub(super) enum Plan {
    /// Run it; `usize` is the data it may send to the host.
    Execute(Option<Rc<Namespace>>, usize),
    /// Ask for its data first (R2T) of this length.
    R2T(Option<Rc<Namespace>>, usize),
}

impl Conn {
    /// Start a checked command once the memory for its data (by R2T, or to
    /// the host) is charged. When this core's DMA memory is spent the
    /// command waits for it on its own: the host gets no R2T and sends no
    /// data, and the reader goes on (H2CData of earlier R2Ts may be next).
    pub(super) fn dispatch(
        self: &Rc<Self>,
        sqe: Sqe,
        plan: Plan,
        icd: Option<DmaBuffer>,
        charge: Option<Charge>,
    ) {
        // Writes take a buffer for their data; reads only where the backing
        // reads into one (files); RAM ranges and null zeroes are sent as they
        // are, and admin data is small heap memory.
        let need = match &plan {
            Plan::R2T(_, len) => *len,
            Plan::Execute(Some(ns), len) if ns.backend.reads_into_buffer(*len) => *len,
            Plan::Execute(..) => 0,
        };
        if need == 0 {
            return self.run(sqe, plan, icd, charge);
        }
        drop(charge);
        if let Some(c) = self.shard.dma.try_acquire(need) {
            return self.run(sqe, plan, icd, Some(c));
        }
        self.waiting_mem.set(self.waiting_mem.get() + 1);
        let me = self.clone();
        glommio::spawn_local(async move {
            let got =
                futures_lite::future::or(async { Some(me.shard.dma.acquire(need).await) }, async {
                    me.kill.wait().await;
                    None
                })
                .await;
            me.waiting_mem.set(me.waiting_mem.get() - 1);
            match got {
                Some(c) => me.run(sqe, plan, icd, Some(c)),
                None => me.complete(sqe.cid(), Response::status(Status::SQ_DELETED), 0, None),
            }
        })
        .detach();
    }

    fn run(self: &Rc<Self>, sqe: Sqe, plan: Plan, icd: Option<DmaBuffer>, charge: Option<Charge>) {
        match plan {
            Plan::R2T(ns, len) => self.start_r2t(sqe, ns, len, charge),
            Plan::Execute(ns, max_len) => self.spawn_execute(sqe, ns, icd, max_len, charge),
        }
    }

    /// Check a command and the data it carries or asks for.
    pub(super) fn plan(&self, sqe: &Sqe, icd: Option<&DmaBuffer>) -> Result<Plan, Status> {
        let (xfer, ns) = self.q.prepare(sqe)?;
        Ok(match data_path(xfer, sqe.sgl(), icd.map(|b| b.len()))? {
            DataPath::Execute(len) => Plan::Execute(ns, len),
            DataPath::R2T(len) => Plan::R2T(ns, len),
        })
    }

    /// Charge in-capsule data to this core's DMA memory. When it is spent
    /// the reader waits, and so stops reading the socket; but not while this
    /// queue has R2Ts open or commands waiting for memory: their H2CData is
    /// behind us in the stream, so waiting could deadlock. That memory is
    /// charged over the limit instead (bounded by queue depth times the
    /// in-capsule size). While the reader waits no new R2T can start here.
    pub(super) async fn charge_in_capsule(&self, len: usize) -> Charge {
        let dma = &self.shard.dma;
        if let Some(c) = dma.try_acquire(len) {
            return c;
        }
        if self.waiting_mem.get() > 0 || self.rx.borrow().open_transfers() > 0 {
            return dma.force(len);
        }
        // Waiting for memory is not the host's fault: the PDU timer stops.
        let open = self.pdu_open.replace(false);
        let c = dma.acquire(len).await;
        self.pdu_open.set(open);
        c
    }

    fn start_r2t(&self, sqe: Sqe, ns: Option<Rc<Namespace>>, len: usize, charge: Option<Charge>) {
        let cid = sqe.cid();
        let x = H2cXfer {
            sqe,
            ns,
            buf: Some(dma_buffer(len)),
            charge,
        };
        let ttag = self.rx.borrow_mut().open(cid, len, x);
        // One R2T for the whole transfer; the host splits it at MAXH2CDATA.
        self.out.push(Out::R2T(DataHeader {
            cccid: cid,
            ttag,
            offset: 0,
            length: len as u32,
        }));
    }

    pub(super) fn spawn_execute(
        self: &Rc<Self>,
        sqe: Sqe,
        ns: Option<Rc<Namespace>>,
        data: Option<DmaBuffer>,
        max_len: usize,
        charge: Option<Charge>,
    ) {
        if let Some(n) = &ns {
            if let Some(start) = self.q.startable(&sqe, n, data.as_ref()) {
                // No task: the completion answers (`nvme::io_start`). What
                // completes while it is submitted is part of the reader's
                // burst, as for an inline poll below.
                self.executing.set(self.executing.get() + 1);
                self.reader_running.set(true);
                let me = self.clone();
                start.go(sqe, data, move |r| {
                    me.finish(sqe, r, DoneCtx { max_len, charge });
                    me.executing.set(me.executing.get() - 1);
                });
                self.reader_running.set(false);
                return;
            }
        }
        // RAM and null namespaces never wait: run those commands right here
        // instead of paying for a task. A lone read of a file or block
        // device runs here up to its submission too, so that it reaches the
        // device before this reader's next `recv` (an empty one at QD1,
        // which stood between the command's arrival and its device issue);
        // what waits goes on in a task. Not in a burst: reads submitted as
        // they were parsed, each waking a loop device's worker before the
        // next, cost a loop device 12% at QD32.
        let lone_read = self.executing.get() == 0
            && ns.is_some()
            && sqe.opcode() == crate::wire::command::io::READ;
        let inline = lone_read || ns.as_ref().is_some_and(|n| n.backend.is_synchronous());
        let me = self.clone();
        self.executing.set(self.executing.get() + 1);
        let fut = async move {
            let ctx = DoneCtx { max_len, charge };
            me.q.run(&*me, sqe, ns, data, &me.kill, ctx).await;
            me.executing.set(me.executing.get() - 1);
        };
        // A spawned task's first poll runs here too (glommio runs it at
        // once): what completes in it (a device that completes in the
        // submitting call) is part of the reader's burst as well.
        self.reader_running.set(true);
        if inline {
            // Pinned in a box of its own only here: a spawned task holds
            // its future in its own allocation already.
            let mut fut = Box::pin(fut);
            let mut cx = Context::from_waker(Waker::noop());
            if fut.as_mut().poll(&mut cx).is_ready() {
                self.reader_running.set(false);
                return;
            }
            glommio::spawn_local(fut).detach();
        } else {
            glommio::spawn_local(fut).detach();
        }
        self.reader_running.set(false);
    }

    /// End a command started without a task, as `Queue::run` ends the
    /// others: a failure is in the error log before the host sees it.
    fn finish(self: &Rc<Self>, sqe: Sqe, r: Response, ctx: DoneCtx) {
        if r.status.is_success() {
            return self.q.complete(&**self, sqe.cid(), r, ctx);
        }
        let me = self.clone();
        self.executing.set(self.executing.get() + 1);
        glommio::spawn_local(async move {
            me.q.log_failure(&sqe, r.status).await;
            me.q.complete(&*me, sqe.cid(), r, ctx);
            me.executing.set(me.executing.get() - 1);
        })
        .detach();
    }

    /// A command that ends without running (or with a transport error).
    pub(super) fn complete(
        &self,
        cid: u16,
        resp: Response,
        max_len: usize,
        charge: Option<Charge>,
    ) {
        self.q
            .complete(self, cid, resp, DoneCtx { max_len, charge });
    }
}
