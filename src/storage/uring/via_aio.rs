//! The ring's reads and writes through Linux AIO (`storage::aio`; which
//! backings: `storage::route`). They share the ring's operations, limits
//! and reaper.

use super::{complete, errno, Op, OpFuture, Ring, State, Submit, Then, Thens, CQ_ENTRIES};
use crate::storage::aio;
use glommio::io::DmaBuffer;
use io_uring::{opcode, types};
use slab::Slab;
use std::future::Future;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::rc::Rc;

impl Ring {
    /// Read into `buf` from `offset` through Linux AIO, going to the kernel
    /// as `how` says (`Now`, or `GatherHandOver` for a threaded device); `nowait`: fail with EAGAIN
    /// or stop short where it would block (`aio::Request`).
    pub fn aio_read(
        self: &Rc<Self>,
        file: &Rc<OwnedFd>,
        offset: u64,
        buf: DmaBuffer,
        nowait: bool,
        how: Submit,
    ) -> impl Future<Output = (io::Result<usize>, DmaBuffer)> {
        self.with_aio(aio::Kind::Read, file, offset, buf, nowait, how)
    }

    /// Write `buf` at `offset` through Linux AIO, going to the kernel as
    /// `how` says; `nowait` as for `aio_read`.
    pub fn aio_write(
        self: &Rc<Self>,
        file: &Rc<OwnedFd>,
        offset: u64,
        buf: DmaBuffer,
        nowait: bool,
        how: Submit,
    ) -> impl Future<Output = (io::Result<usize>, DmaBuffer)> {
        self.with_aio(aio::Kind::Write, file, offset, buf, nowait, how)
    }

    fn with_aio(
        self: &Rc<Self>,
        kind: aio::Kind,
        file: &Rc<OwnedFd>,
        offset: u64,
        buf: DmaBuffer,
        nowait: bool,
        how: Submit,
    ) -> impl Future<Output = (io::Result<usize>, DmaBuffer)> {
        let id = self.aio_as(kind, file, offset, buf, nowait, how, State::Waiting(None));
        owned(OpFuture::new(self, id))
    }

    /// Start a read or write as `aio_read` and `aio_write` do, without a
    /// future: `then` is called with its result and buffer once the kernel
    /// completes it, from the reaper (or at once, for a device that
    /// completes in the submitting call).
    #[allow(clippy::too_many_arguments)]
    pub fn aio_then(
        self: &Rc<Self>,
        kind: aio::Kind,
        file: &Rc<OwnedFd>,
        offset: u64,
        buf: DmaBuffer,
        nowait: bool,
        how: Submit,
        then: Then,
    ) {
        self.aio_as(kind, file, offset, buf, nowait, how, State::Then(then));
    }

    /// Queue an AIO operation in `state`: its id.
    #[allow(clippy::too_many_arguments)]
    fn aio_as(
        self: &Rc<Self>,
        kind: aio::Kind,
        file: &Rc<OwnedFd>,
        offset: u64,
        mut buf: DmaBuffer,
        nowait: bool,
        how: Submit,
        state: State,
    ) -> usize {
        // The kernel writes a read's data through this pointer.
        let (ptr, len) = (buf.as_mut_ptr().cast_const(), buf.len());
        if !self.aio_ready() {
            // Slower (a worker thread per operation), never an I/O error.
            let fd = types::Fd(file.as_raw_fd());
            let sqe = match kind {
                aio::Kind::Read => opcode::Read::new(fd, ptr.cast_mut(), len as u32)
                    .offset(offset)
                    .build(),
                aio::Kind::Write => opcode::Write::new(fd, ptr, len as u32)
                    .offset(offset)
                    .build(),
            };
            return self.submit_as(sqe, file, Some(buf), how, state);
        }
        let id = self.ops.borrow_mut().insert(Op {
            state,
            buf: Some(buf),
            _file: file.clone(),
        });
        self.aio_backlog.borrow_mut().push_back(aio::Request {
            kind,
            fd: file.as_raw_fd(),
            buf: ptr,
            len,
            offset,
            nowait,
            data: id as u64,
        });
        self.touch();
        self.note_hand_over(how);
        // As the ring's own operations (`Ring::submit`).
        let waiting = self.aio_backlog.borrow().len() as u32;
        if self.goes_now(how, waiting) {
            self.submit_aio();
            // A device that completes in the submitting call (zram: a
            // copy) has its result in the ring already: taken now, the
            // command goes on at its first poll, without a round of the
            // executor.
            let mut thens = Thens::new();
            let done = self.reap_aio(&mut self.ops.borrow_mut(), &mut thens);
            self.completed(done);
            self.hand_over();
            thens.call();
        }
        self.wake_reaper();
        id
    }

    /// Whether this executor has an AIO context, made on first use. Where
    /// the kernel refuses one (`fs.aio-max-nr` counts every context of the
    /// system), the operations go through the ring instead.
    fn aio_ready(&self) -> bool {
        if self.aio_unavailable.get() {
            return false;
        }
        let mut ctx = self.aio.borrow_mut();
        if ctx.is_none() {
            let resfd = self.signal.as_ref().map(|s| s.as_raw_fd());
            match aio::Context::new(CQ_ENTRIES, resfd) {
                Ok(c) => *ctx = Some(c),
                Err(e) => {
                    log::warn!("io_setup: {e}; reads and writes go through io_uring's workers");
                    self.aio_unavailable.set(true);
                    return false;
                }
            }
        }
        true
    }

    /// Give the kernel the AIO operations that wait, as room allows; one
    /// it refuses completes with the error.
    pub(super) fn submit_aio(&self) {
        let mut thens = Thens::new();
        self.submit_aio_into(&mut thens);
        thens.call();
    }

    fn submit_aio_into(&self, thens: &mut Thens) {
        let mut backlog = self.aio_backlog.borrow_mut();
        if backlog.is_empty() {
            return;
        }
        let ctx = self.aio.borrow();
        let ctx = ctx.as_ref().expect("made before its first operation");
        while !backlog.is_empty() {
            let room = CQ_ENTRIES.saturating_sub(self.queued.get() + self.in_kernel.get());
            if room == 0 {
                break;
            }
            let reqs = backlog.make_contiguous();
            let reqs = &reqs[..reqs.len().min(room as usize)];
            // SAFETY: each request's buffer and file are owned by its `Op`
            // until its completion is reaped.
            match unsafe { ctx.submit(reqs) } {
                Ok(n) => {
                    backlog.drain(..n);
                    self.in_kernel.set(self.in_kernel.get() + n as u32);
                    self.aio_in_kernel.set(self.aio_in_kernel.get() + n as u32);
                    self.aio_submits.set(self.aio_submits.get() + 1);
                    self.went_to_kernel();
                }
                Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => break,
                Err(e) => {
                    let req = backlog.pop_front().expect("not empty");
                    complete(
                        &mut self.ops.borrow_mut(),
                        req.data as usize,
                        -errno(&e),
                        thens,
                    );
                }
            }
        }
    }

    /// Complete the AIO operations the kernel has finished.
    pub(super) fn reap_aio(&self, ops: &mut Slab<Op>, thens: &mut Thens) -> usize {
        if self.aio_in_kernel.get() == 0 {
            return 0;
        }
        let aio = self.aio.borrow();
        let Some(ctx) = aio.as_ref() else {
            return 0;
        };
        let n = ctx.reap(|data, res| {
            // Operations are bounded far below 2 GiB (MDTS).
            let res = i32::try_from(res).expect("an operation's result fits an i32");
            complete(ops, data as usize, res, thens);
        });
        self.aio_in_kernel.set(self.aio_in_kernel.get() - n as u32);
        n
    }
}

/// An operation's result with the buffer it owned.
async fn owned(f: OpFuture) -> (io::Result<usize>, DmaBuffer) {
    let (r, buf) = f.await;
    (r, buf.expect("the buffer comes back with its operation"))
}
