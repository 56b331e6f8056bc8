//! This core's io_uring for namespace I/O, polled by the core itself.
//!
//! glommio submits and reaps its rings only between runs of its task queues,
//! re-arming two preemption timers each time (a file read at QD1 made seven
//! `io_uring_enter`s), and while any task stays runnable (readers polling
//! their sockets) it does neither until its 100 ms preemption timer; so the
//! core parked while the device worked, and a file namespace reached 0.6-0.8
//! of SPDK, whose reactor polls the sockets and the AIO completion queue in
//! one loop. Namespace I/O therefore goes to a ring of our own, and a task
//! of this core (`reap`) looks at the completion queue (a memory read, no
//! system call) every round while anything is in flight. It stops when
//! nothing is in flight, and for I/O slower than the poll window it lets
//! the core sleep until the kernel posts a completion (an eventfd read in
//! glommio's ring), so an idle core still sleeps and a slow device's
//! completion is seen 50-110 µs after it lands, where sleeps on timers that
//! grew with the wait saw it 0.1-3.8 ms late (30 ms pipe reads, 20 each).
//!
//! When to give operations to the kernel: each `io_uring_enter` costs a
//! system call, a block plug and a doorbell (on a virtio disk a VM exit,
//! 1.5 µs), on top of the 6-7 µs the kernel spends on each 4 KiB file
//! write. Submitting every operation on its own (as SPDK's AIO bdev makes
//! one `io_submit` per I/O) left the core saturated at 67-72k random writes
//! at QD32 where SPDK did 90-100k; gathering a whole round's operations
//! (a host's burst of ~30) gave 85k but made the disk serve bursts, and its
//! own latency rose from 50 to 270 µs. So a write goes to the kernel at
//! once when nothing else is in flight (QD1 waits for nobody), or with
//! `GATHER - 1` others queued; the rest go when the reaper looks, later in
//! the same round: 100-105k writes against 66k (6 alternated runs). Reads
//! go at once: they leave the core idle for the disk, and gathered they
//! measured 3% fewer in one set of 8 alternated runs and the same in
//! another. Flushes and hole punches go at once. (A threaded block
//! device's reads gather as its writes do: `handover`.)
//!
//! Later (2026-12-06) the gathering measured differently by backing, and the
//! caller chooses (`Submit`). To a file on a file system each write is
//! 6-7 µs of kernel work in this thread before the disk sees it, and
//! four in one call keep the first one from the disk until all four are
//! through: 4 KiB randwrite at QD8, one at a time was 1.20 and 1.15 of
//! gathering (7 of 7 alternated pairs higher), at QD32 1.02 and 1.01, QD1
//! the same. To a block device (a loop device here) a submission only
//! queues the request, and each call wakes the device's worker: one at a
//! time measured 0.79 of gathering at QD32 and 0.87 at QD8 (4 of 4 lower).
//!
//! Since 2026-12-08 a file's writes gather too, but only with the
//! commands received in the same burst (`burst_continues`): the last of a
//! burst goes with the ones before it. With commands no longer woken as
//! tasks (`nvme::io_start`), QD32 writes to the file saturate the core with
//! the kernel's own work, as SPDK's do (~17 µs a write, 2.8 µs of it the
//! virtio doorbell's VM exit), and the block plug of a gathered call shares
//! one dispatch and one doorbell among its writes. Against one at a time
//! (alternated pairs of 4 s), 4 KiB randwrite QD32 1.14 of the IOPS and
//! 0.60 of the p99, QD8 1.02 (p99 0.67), QD4 0.93 (6 pairs each; two
//! writes often arrive together there, and the first waits for the
//! second's file system work); QD1 never gathers. Gathering across
//! bursts until the reaper looked, as a threaded device's writes do, gave
//! QD32 1.05-1.16 over six sets, but QD4 0.86-0.96 over four and QD8
//! 0.82-1.00 over seven.
//!
//! Some backings' reads and writes go through Linux AIO instead (`aio`,
//! `route` says which), reaped in the same rounds; everything else of
//! theirs still goes through the ring.
//!
//! An operation's buffer and file belong to the ring until the kernel is
//! done with them, even if the command that asked is dropped first. Its
//! completion wakes the future that awaits it, or, for a read or write
//! started without one (`aio_then`, `nvme::io_start`), calls what was given
//! to it, once the ring's own state is no longer borrowed.

use super::aio;
use glommio::io::{BufferedFile, DmaBuffer};
use io_uring::{opcode, squeue, types, IoUring};
use slab::Slab;
use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::Future;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

/// Submission queue entries; more operations wait in a backlog.
const SQ_ENTRIES: u32 = 256;
/// Completion queue entries, and the most operations in the kernel at once
/// (so the completion queue cannot overflow).
const CQ_ENTRIES: u32 = 1024;
/// How long the core polls in-flight I/O with no completion before it
/// sleeps between looks: longer than a flash device takes (50-100 µs
/// here) and than a loaded device's short stalls, short enough that a
/// stuck device does not hold a core busy. Under 4 KiB random reads at
/// QD32 the virtual disk here stalls 14 times a second for 1-5.2 ms (p50
/// 2.6 ms) with the whole queue in it; with 1 ms the core slept through
/// each in about 6 naps, and the wake-up from the last delayed every
/// command of the queue. 5 ms against 1 ms, alternated pairs: file reads
/// 1.039 and 1.026 (p99 0.84 and 0.70 of it), writes 1.013 and 0.974;
/// a loop device's reads 1.18 and 1.13, writes 1.12 and 1.08, both then
/// ahead of SPDK's AIO bdev with a lower p99 (perf/README.md). SPDK's
/// reactor polls whatever is in flight.
pub const IO_POLL: Duration = Duration::from_millis(5);
/// The longest sleep between looks at I/O slower than `IO_POLL`: the delay
/// added to it is at most an eighth of its age, and at most this.
const MAX_BACKOFF: Duration = Duration::from_millis(5);
const MIN_BACKOFF: Duration = Duration::from_micros(20);
/// The reaper reads the clock once in this many rounds.
const CLOCK_EVERY: u32 = 8;
/// Operations gathered into one `io_uring_enter` while others are in
/// flight (4 and 8 measured alike for writes; a whole round's burst made
/// the disk slower).
const GATHER: u32 = 4;

/// When an operation goes to the kernel (see the module's comment).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Submit {
    /// With whatever is queued, now.
    Now,
    /// Now if nothing else is in flight, or if no more of its burst of
    /// commands is received (`burst_continues`); else once `GATHER` are
    /// queued, or when the reaper next looks: a write whose submission is
    /// the device's work in this thread (a file's, a disk's without a
    /// thread of its own).
    Gather,
    /// Now if nothing else is in flight; else once `GATHER` are queued, or
    /// when the reaper next looks, burst or not (each call wakes the
    /// device's thread once); once it went the core may yield to that
    /// thread (`handover`): a read or write of a block device whose driver
    /// works in a thread (`storage::threaded`).
    GatherHandOver,
}

impl Submit {
    /// Whether the operation may wait for others to go with it.
    fn gathers(self) -> bool {
        match self {
            Submit::Now => false,
            Submit::Gather => BURST_CONTINUES.get(),
            Submit::GatherHandOver => true,
        }
    }

    /// Whether the core yields once the operation went (`handover`).
    fn hands_over(self) -> bool {
        matches!(self, Submit::GatherHandOver)
    }
}

/// What a started operation calls with its result and its buffer, in
/// place of a future (`Ring::aio_then`).
pub type Then = Box<dyn FnOnce(io::Result<usize>, DmaBuffer)>;

enum State {
    /// In the kernel; the waker of the future waiting for it.
    Waiting(Option<Waker>),
    /// In the kernel; called at its completion.
    Then(Then),
    Done(i32),
    /// The future was dropped: the completion just frees the resources.
    Orphaned,
}

struct Op {
    state: State,
    /// Memory the kernel reads or writes until the completion.
    buf: Option<DmaBuffer>,
    /// Keeps the descriptor's number from being reused while the entry
    /// naming it may still be submitted.
    _file: Rc<OwnedFd>,
}

/// One executor's ring.
pub struct Ring {
    ring: RefCell<IoUring>,
    ops: RefCell<Slab<Op>>,
    /// Entries waiting for room in the submission queue or under the
    /// in-flight limit.
    backlog: RefCell<VecDeque<squeue::Entry>>,
    /// Entries in the submission queue, not yet given to the kernel.
    queued: Cell<u32>,
    /// Given to the kernel and not yet reaped (both ways).
    in_kernel: Cell<u32>,
    /// The AIO context, made with its first operation.
    aio: RefCell<Option<aio::Context>>,
    /// AIO operations not yet given to the kernel.
    aio_backlog: RefCell<VecDeque<aio::Request>>,
    /// AIO operations in the kernel (part of `in_kernel`).
    aio_in_kernel: Cell<u32>,
    /// `io_submit`s that submitted something.
    aio_submits: Cell<u64>,
    /// The kernel refused an AIO context: AIO operations use the ring.
    aio_unavailable: Cell<bool>,
    /// Submissions plus completions: a change means the ring is busy.
    events: Cell<u64>,
    /// The reaper's waker while it sleeps (nothing in flight).
    reaper: RefCell<Option<Waker>>,
    reaper_running: Cell<bool>,
    /// The reaper sleeps (slow I/O): it will not look this round.
    napping: Cell<bool>,
    /// An operation that hands over (`Submit::hands_over`: a block device
    /// whose driver may work in a thread) was queued since the last
    /// submission (`handover`).
    to_hand_over: Cell<bool>,
    /// Such operations went to the kernel since the last hand-over.
    handing_over: Cell<bool>,
    /// Yields to a device's thread so far.
    handovers: Cell<u64>,
    /// An eventfd the kernel signals when it posts a completion, while the
    /// reaper sleeps (enabled only then), read through glommio's own ring so
    /// that a completion wakes a sleeping executor; `None` where the kernel
    /// cannot register it (then the reaper sleeps on timers alone).
    signal: Option<BufferedFile>,
    /// Sleeps that a completion's signal ended.
    signalled: Cell<u64>,
    /// `io_uring_enter`s that submitted something.
    enters: Cell<u64>,
    window: Cell<Duration>,
    executor: usize,
}

thread_local! {
    static CURRENT: RefCell<Option<Rc<Ring>>> = const { RefCell::new(None) };
    static WINDOW: Cell<Duration> = const { Cell::new(IO_POLL) };
    static BURST_CONTINUES: Cell<bool> = const { Cell::new(false) };
}

/// How long this thread's executor polls in-flight I/O before it backs off
/// (`--idle-poll` 0: not at all). Set before the first I/O.
pub fn set_window(window: Duration) {
    WINDOW.set(window);
}

/// Operations in flight on this executor's ring (0 if it has none).
pub fn in_flight() -> usize {
    CURRENT.with(|c| c.borrow().as_ref().map_or(0, |r| r.pending() as usize))
}

/// A counter that moves whenever this executor's ring queues or completes
/// an operation.
pub fn events() -> u64 {
    CURRENT.with(|c| c.borrow().as_ref().map_or(0, |r| r.events.get()))
}

/// Complete what this executor's ring has finished, now: for a task about
/// to poll a socket, which yields first if this woke anyone, so that the
/// replies go out before its system call. Waiting for the reaper's turn, a
/// file read at QD1 saw up to four `recv`s of the core's two polling
/// readers between its completion and its reply's `sendmsg` in a fifth of
/// the reads (kernel trace: 3.9-5.0 µs against SPDK's 1.9-2.3). Returns
/// whether any completed (their tasks woken, `reply_hint` set).
pub fn reap_now() -> bool {
    // Not borrowed while reaping: a started operation's call may use it.
    match CURRENT.with(|c| c.borrow().clone()) {
        Some(r) if r.in_kernel.get() > 0 && !r.napping.get() => r.reap_finished() > 0,
        _ => false,
    }
}

/// Whether more of the burst that the command about to start came in is
/// already received (the transport says so before each command it starts):
/// its `Submit::Gather` write then waits for the next ones, and the last
/// of the burst takes the gathered ones with it. A value left over from an
/// earlier command only keeps such a write to the reaper's next look.
pub fn burst_continues(more: bool) {
    BURST_CONTINUES.set(more);
}

impl Ring {
    /// `io_submit`s that submitted something, so far.
    #[cfg(test)]
    pub fn aio_submits(&self) -> u64 {
        self.aio_submits.get()
    }

    /// This executor's ring, made on first use (tests run several executors
    /// one after another on one thread; each gets its own).
    pub fn current() -> io::Result<Rc<Ring>> {
        let id = glommio::executor().id();
        let old = CURRENT.with(|c| {
            let mut c = c.borrow_mut();
            match c.as_ref() {
                Some(r) if r.executor == id => Ok(r.clone()),
                _ => Err(c.take()),
            }
        });
        match old {
            Ok(r) => return Ok(r),
            // Not borrowed meanwhile: a started operation's call may use it.
            Err(Some(old)) => old.wait_all(),
            Err(None) => {}
        }
        CURRENT.with(|c| {
            let mut c = c.borrow_mut();
            let ring = build()?;
            let signal = reaper::completion_signal(&ring);
            let r = Rc::new(Ring {
                ring: RefCell::new(ring),
                ops: RefCell::new(Slab::with_capacity(CQ_ENTRIES as usize)),
                backlog: RefCell::new(VecDeque::new()),
                queued: Cell::new(0),
                in_kernel: Cell::new(0),
                aio: RefCell::new(None),
                aio_backlog: RefCell::new(VecDeque::new()),
                aio_in_kernel: Cell::new(0),
                aio_submits: Cell::new(0),
                aio_unavailable: Cell::new(false),
                events: Cell::new(0),
                reaper: RefCell::new(None),
                reaper_running: Cell::new(false),
                napping: Cell::new(false),
                to_hand_over: Cell::new(false),
                handing_over: Cell::new(false),
                handovers: Cell::new(0),
                signal,
                signalled: Cell::new(0),
                enters: Cell::new(0),
                window: Cell::new(WINDOW.get()),
                executor: id,
            });
            *c = Some(r.clone());
            Ok(r)
        })
    }

    /// Read into `buf` from `offset`: the bytes read, and the buffer.
    pub fn read(
        self: &Rc<Self>,
        file: &Rc<OwnedFd>,
        offset: u64,
        mut buf: DmaBuffer,
    ) -> impl Future<Output = (io::Result<usize>, DmaBuffer)> {
        let fd = types::Fd(file.as_raw_fd());
        let sqe = opcode::Read::new(fd, buf.as_mut_ptr(), buf.len() as u32)
            .offset(offset)
            .build();
        self.with_buffer(sqe, file, buf, Submit::Now)
    }

    /// Write `buf` at `offset`, going to the kernel as `how` says: the
    /// bytes written, and the buffer.
    pub fn write(
        self: &Rc<Self>,
        file: &Rc<OwnedFd>,
        offset: u64,
        buf: DmaBuffer,
        how: Submit,
    ) -> impl Future<Output = (io::Result<usize>, DmaBuffer)> {
        let fd = types::Fd(file.as_raw_fd());
        let sqe = opcode::Write::new(fd, buf.as_ptr(), buf.len() as u32)
            .offset(offset)
            .build();
        self.with_buffer(sqe, file, buf, how)
    }

    /// fdatasync(2).
    pub async fn fdatasync(self: &Rc<Self>, file: &Rc<OwnedFd>) -> io::Result<()> {
        let sqe = opcode::Fsync::new(types::Fd(file.as_raw_fd()))
            .flags(types::FsyncFlags::DATASYNC)
            .build();
        self.submit(sqe, file, None, Submit::Now).await.0.map(drop)
    }

    /// fallocate(2).
    pub async fn fallocate(
        self: &Rc<Self>,
        file: &Rc<OwnedFd>,
        mode: i32,
        offset: u64,
        len: u64,
    ) -> io::Result<()> {
        let sqe = opcode::Fallocate::new(types::Fd(file.as_raw_fd()), len)
            .offset(offset)
            .mode(mode)
            .build();
        self.submit(sqe, file, None, Submit::Now).await.0.map(drop)
    }

    fn with_buffer(
        self: &Rc<Self>,
        sqe: squeue::Entry,
        file: &Rc<OwnedFd>,
        buf: DmaBuffer,
        how: Submit,
    ) -> impl Future<Output = (io::Result<usize>, DmaBuffer)> {
        let f = self.submit(sqe, file, Some(buf), how);
        async move {
            let (r, buf) = f.await;
            (r, buf.expect("the buffer comes back with its operation"))
        }
    }

    fn submit(
        self: &Rc<Self>,
        sqe: squeue::Entry,
        file: &Rc<OwnedFd>,
        buf: Option<DmaBuffer>,
        how: Submit,
    ) -> OpFuture {
        let id = self.submit_as(sqe, file, buf, how, State::Waiting(None));
        OpFuture::new(self, id)
    }

    /// Queue `sqe` as an operation in `state`, to go as `how` says: its id.
    fn submit_as(
        self: &Rc<Self>,
        sqe: squeue::Entry,
        file: &Rc<OwnedFd>,
        buf: Option<DmaBuffer>,
        how: Submit,
        state: State,
    ) -> usize {
        let id = self.ops.borrow_mut().insert(Op {
            state,
            buf,
            _file: file.clone(),
        });
        self.backlog
            .borrow_mut()
            .push_back(sqe.user_data(id as u64));
        self.touch();
        self.note_hand_over(how);
        let waiting = self.backlog.borrow().len() as u32 + self.queued.get();
        if self.goes_now(how, waiting) {
            self.submit_queued();
            self.hand_over();
        }
        self.wake_reaper();
        id
    }

    /// Whether an operation asked to go as `how`, with `waiting` queued
    /// for the same call (itself included), goes to the kernel now: not
    /// one to gather now (`Submit::gathers`), or alone in flight, or
    /// enough gathered, or nobody looks this round.
    /// Otherwise the reaper submits the gathered ones when it looks.
    fn goes_now(&self, how: Submit, waiting: u32) -> bool {
        !how.gathers() || self.in_kernel.get() == 0 || waiting >= GATHER || self.napping.get()
    }

    fn touch(&self) {
        self.events.set(self.events.get().wrapping_add(1));
    }

    fn wake_reaper(self: &Rc<Self>) {
        if !self.reaper_running.replace(true) {
            glommio::spawn_local(reaper::reap(self.clone())).detach();
        } else if let Some(w) = self.reaper.borrow_mut().take() {
            w.wake();
        }
    }

    /// Move the backlog into the submission queue and give the kernel what
    /// is queued (with COOP_TASKRUN, entering also posts completions that
    /// wait for this thread: TASKRUN says there are some).
    fn submit_queued(&self) {
        let mut ring = self.ring.borrow_mut();
        {
            let mut backlog = self.backlog.borrow_mut();
            let mut sq = ring.submission();
            while let Some(e) = backlog.front() {
                if self.queued.get() + self.in_kernel.get() >= CQ_ENTRIES {
                    break;
                }
                // SAFETY: the entry's buffer and file are owned by its `Op`
                // until its completion is reaped.
                if unsafe { sq.push(e) }.is_err() {
                    break;
                }
                backlog.pop_front();
                self.queued.set(self.queued.get() + 1);
            }
        }
        if self.queued.get() == 0 && !ring.submission().taskrun() {
            return;
        }
        match ring.submit() {
            Ok(n) => {
                if n > 0 {
                    self.enters.set(self.enters.get() + 1);
                }
                self.queued.set(self.queued.get() - n as u32);
                self.in_kernel.set(self.in_kernel.get() + n as u32);
                if n > 0 {
                    self.went_to_kernel();
                }
            }
            // Full completion queue or no memory now: reap, retry.
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EBUSY | libc::EAGAIN | libc::EINTR)
                ) => {}
            Err(e) => log::error!("io_uring_enter: {e}"),
        }
    }

    /// Submit what waits and complete what the kernel finished. Returns
    /// completions seen.
    fn drive(&self) -> usize {
        self.submit_queued();
        self.submit_aio();
        let done = self.reap_finished();
        self.hand_over();
        done
    }

    /// Complete what the kernel finished (both ways). Returns how many.
    fn reap_finished(&self) -> usize {
        let mut thens = Thens::new();
        let done = {
            let mut ring = self.ring.borrow_mut();
            let mut ops = self.ops.borrow_mut();
            let mut done = 0;
            for cqe in ring.completion() {
                done += 1;
                complete(&mut ops, cqe.user_data() as usize, cqe.result(), &mut thens);
            }
            done + self.reap_aio(&mut ops, &mut thens)
        };
        self.completed(done);
        thens.call();
        done
    }

    /// Account for `done` operations just completed.
    fn completed(&self, done: usize) {
        if done > 0 {
            crate::reply_hint::storage_completed();
            self.in_kernel.set(self.in_kernel.get() - done as u32);
            self.touch();
        }
    }

    /// Operations not yet complete (queued, in the kernel, or backlogged).
    fn pending(&self) -> u32 {
        self.queued.get()
            + self.in_kernel.get()
            + self.backlog.borrow().len() as u32
            + self.aio_backlog.borrow().len() as u32
    }

    /// Block until the kernel is done with every operation (an executor
    /// ending with I/O in flight must not free memory the kernel writes).
    fn wait_all(&self) {
        while self.pending() > 0 {
            self.drive();
            if self.aio_in_kernel.get() > 0 {
                // AIO is reaped from its ring only: look again shortly.
                std::thread::sleep(Duration::from_micros(50));
            } else if self.in_kernel.get() > 0 {
                let _ = self.ring.borrow().submit_and_wait(1);
            }
        }
    }
}

impl Drop for Ring {
    fn drop(&mut self) {
        self.wait_all();
    }
}

/// Started operations' calls, made once the ring's state is no longer
/// borrowed (a call may queue more operations).
struct Thens(Vec<(Then, i32, DmaBuffer)>);

impl Thens {
    fn new() -> Thens {
        Thens(Vec::new())
    }

    fn call(self) {
        for (then, res, buf) in self.0 {
            then(result(res), buf);
        }
    }
}

fn result(res: i32) -> io::Result<usize> {
    if res < 0 {
        Err(io::Error::from_raw_os_error(-res))
    } else {
        Ok(res as usize)
    }
}

/// Record operation `id`'s result `res` and wake its future (or free it, if
/// the future is gone); a started one's call goes to `thens`.
fn complete(ops: &mut Slab<Op>, id: usize, res: i32, thens: &mut Thens) {
    let op = ops
        .get_mut(id)
        .expect("a completion names a live operation");
    match std::mem::replace(&mut op.state, State::Done(res)) {
        State::Waiting(w) => {
            if let Some(w) = w {
                w.wake();
            }
        }
        State::Then(then) => {
            let buf = ops.remove(id).buf;
            thens
                .0
                .push((then, res, buf.expect("a started operation has a buffer")));
        }
        State::Orphaned => {
            ops.remove(id);
        }
        State::Done(_) => unreachable!("an operation completes once"),
    }
}

fn errno(e: &io::Error) -> i32 {
    e.raw_os_error().unwrap_or(libc::EIO)
}

fn build() -> io::Result<IoUring> {
    // COOP_TASKRUN: no interrupt per completion to a thread that polls and
    // makes system calls all the time (Linux 5.19); without it on older
    // kernels.
    IoUring::builder()
        .setup_cqsize(CQ_ENTRIES)
        .setup_coop_taskrun()
        .setup_taskrun_flag()
        .build(SQ_ENTRIES)
        .or_else(|_| {
            IoUring::builder()
                .setup_cqsize(CQ_ENTRIES)
                .build(SQ_ENTRIES)
        })
}

/// One operation's result.
struct OpFuture {
    ring: Rc<Ring>,
    id: usize,
    done: bool,
}

impl OpFuture {
    /// The future of operation `id`, queued in `state` `Waiting`.
    fn new(ring: &Rc<Ring>, id: usize) -> OpFuture {
        OpFuture {
            ring: ring.clone(),
            id,
            done: false,
        }
    }
}

impl Future for OpFuture {
    type Output = (io::Result<usize>, Option<DmaBuffer>);

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut ops = self.ring.ops.borrow_mut();
        let op = &mut ops[self.id];
        match &mut op.state {
            State::Done(res) => {
                let res = *res;
                let op = ops.remove(self.id);
                drop(ops);
                self.done = true;
                Poll::Ready((result(res), op.buf))
            }
            State::Waiting(w) => {
                *w = Some(cx.waker().clone());
                Poll::Pending
            }
            State::Then(_) | State::Orphaned => {
                unreachable!("a live future's operation is neither started nor orphaned")
            }
        }
    }
}

impl Drop for OpFuture {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let mut ops = self.ring.ops.borrow_mut();
        if matches!(ops[self.id].state, State::Done(_)) {
            ops.remove(self.id);
        } else {
            ops[self.id].state = State::Orphaned;
        }
    }
}

mod handover;
mod reaper;
mod via_aio;

#[cfg(test)]
mod tests;
