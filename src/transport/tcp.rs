//! NVMe/TCP connection = one queue (NVMe/TCP Transport 1.0): the socket
//! task. The reader reads each PDU header and has `rx` check it, moves data
//! straight into DMA buffers, and starts one task per command; command tasks
//! complete in any order and push their results to the outbox, which the
//! writer (`writer.rs`) sends in batches. How a checked command gets its
//! memory and starts: `tcp/execute.rs`.
//!
//! Receive flow: ICReq → ICResp, then CapsuleCmd (SQE plus optional in-capsule
//! data read straight into a DMA buffer), H2CData answering our R2Ts (read
//! straight into the command's DMA buffer), or H2CTermReq.

mod execute;

use super::flow::{batch_for_depth, writer_due, DepthEstimate, FLOW_BATCH};
use super::outbox::Outbox;
use super::recv::RecvBuf;
use super::rx::{Fatal, Pdu, Rx};
use super::socket::{self, PollingReader};
use super::watchdog::watchdog;
use super::writer::{self, writer, Out, Sender};
use crate::balance::Seat;
use crate::config::ADMIN_IN_CAPSULE_DATA;
use crate::nvme::fabrics::Binding;
use crate::nvme::queue::{Admit, Queue, Transport};
use crate::nvme::{Namespace, Response};
use crate::shard::Shard;
use crate::storage::{dma_buffer, Charge};
use crate::trigger::Trigger;
use crate::wire::command::{Sqe, SQE_LEN};
use crate::wire::pdu::{
    self, fes, field, pdu_type, Digests, FatalError, IcReq, IcResp, Layout, CH_LEN, DIGEST_LEN,
};
use crate::wire::status::Status;
use futures_lite::io::{ReadHalf, WriteHalf};
use futures_lite::AsyncWriteExt;
use glommio::io::DmaBuffer;
use glommio::net::TcpStream;
use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::os::unix::io::{AsRawFd, RawFd};
use std::rc::Rc;
use std::time::{Duration, Instant};

/// How often a closing queue whose commands are still running at the
/// backing says so.
const DRAIN_REPORT_INTERVAL: Duration = Duration::from_secs(5);

/// Why the reader stopped.
enum Stop {
    Eof,
    Killed,
    Io(std::io::Error),
    Fatal(FatalError, Vec<u8>),
    HostTerm(FatalError),
}

impl From<std::io::Error> for Stop {
    fn from(e: std::io::Error) -> Stop {
        Stop::Io(e)
    }
}

impl From<Fatal> for Stop {
    fn from(f: Fatal) -> Stop {
        Stop::Fatal(f.error, f.header)
    }
}

/// A write whose data arrives by H2CData: what `Rx` keeps for it besides
/// its progress.
struct H2cXfer {
    sqe: Sqe,
    ns: Option<Rc<Namespace>>,
    /// Out while the reader fills it.
    buf: Option<DmaBuffer>,
    charge: Option<Charge>,
}

/// The TCP transport's part of a command, back with its completion.
pub struct DoneCtx {
    /// Bytes of read data the host's SGL takes.
    max_len: usize,
    /// The command's DMA memory, returned once its completion is sent.
    charge: Option<Charge>,
}

impl Transport for Conn {
    type Ctx = DoneCtx;

    /// The CID is free again at once; the command still counts against the
    /// queue's entries until the writer has sent its completion, so a host
    /// that stops reading cannot make the outbox grow without bound.
    fn queue_response(&self, cid: u16, resp: Response, ctx: DoneCtx) {
        let done = Out::Done {
            cid,
            resp,
            max_len: ctx.max_len,
            _charge: ctx.charge,
        };
        if self.out.stalled() {
            done.release_hold();
        }
        if !self.may_send_inline(&done) {
            self.out.push(done);
            return;
        }
        let mut enc = self.inline_enc.borrow_mut();
        if let Some(rest) = writer::send_inline(self, self.fd, done, &mut enc) {
            self.out.push(rest);
        }
    }

    /// No I/O will weigh on this core through an admin or discovery queue.
    fn admin_connected(&self) {
        self.seat.vacate();
    }
}

pub struct Conn {
    pub(super) shard: Rc<Shard>,
    pub(super) digests: Digests,
    /// Host PDU data alignment in bytes.
    pub(super) pda: usize,
    pub(super) out: Outbox<Out>,
    /// The queue as the controller core sees it: binding, CIDs, dispatch.
    pub(super) q: Queue<Shard>,
    depth: DepthEstimate,
    /// Counted in the shard's `active_io`.
    active: Cell<bool>,
    /// Commands between dispatch and completion (AERs leave at once: they
    /// complete only when an event comes).
    executing: Cell<u32>,
    /// Commands waiting for DMA memory before their R2T or execution.
    waiting_mem: Cell<u32>,
    /// The receive protocol: PDU rules and the transfers asked for by R2T.
    rx: RefCell<Rx<H2cXfer>>,
    pub(super) kill: Rc<Trigger>,
    /// A PDU has begun to arrive and is not complete yet.
    pub(super) pdu_open: Cell<bool>,
    /// PDUs read so far: the watchdog sees progress without a clock read per PDU.
    pub(super) pdus: Cell<u64>,
    /// This connection's weight in where new connections go; given up
    /// once it is an admin queue (`balance`).
    seat: Seat,
    /// The socket (open while the reader or the writer lives).
    fd: RawFd,
    /// The reader is running a command: in its own task, or a spawned
    /// task's first poll (`spawn_execute`).
    reader_running: Cell<bool>,
    /// Buffers of completions sent by their command's task.
    inline_enc: RefCell<writer::Encoded>,
}

impl Drop for Conn {
    fn drop(&mut self) {
        if self.active.get() {
            let n = self.shard.active_io.get();
            assert!(n > 0, "an active queue is counted in its core's active_io");
            self.shard.active_io.set(n - 1);
        }
    }
}

type Reader = RecvBuf<PollingReader<ReadHalf<TcpStream>>>;

/// Serve one accepted connection until it closes.
pub async fn serve(shard: Rc<Shard>, stream: TcpStream, kill: Rc<Trigger>, seat: Seat) {
    tune_socket(&shard, &stream);
    let unknown = || SocketAddr::from(([0, 0, 0, 0], 0));
    let peer = stream.peer_addr().unwrap_or_else(|_| unknown());
    let local = stream.local_addr().unwrap_or_else(|_| unknown());
    log::info!("core {}: connection from {peer}", shard.id);
    // The fd stays valid while either half lives (both share the stream).
    let fd = stream.as_raw_fd();
    let (r, mut w) = futures_lite::io::split(stream);
    let reader = PollingReader::new(fd, r, shard.cfg.idle_poll);
    let reg = reader.registration();
    let mut rb = RecvBuf::new(reader);
    let rx = RefCell::new(Rx::new(shard.cfg.maxh2cdata as usize));
    let Some(icreq) = handshake(&shard, &mut rb, &rx, &mut w, peer).await else {
        return;
    };
    let conn = Rc::new(Conn {
        shard: shard.clone(),
        digests: icreq.digests,
        pda: (icreq.hpda as usize + 1) * 4,
        out: Outbox::default(),
        q: Queue::new(shard.clone(), peer, local),
        depth: DepthEstimate::default(),
        active: Cell::new(false),
        executing: Cell::new(0),
        waiting_mem: Cell::new(0),
        rx,
        kill: kill.clone(),
        pdu_open: Cell::new(false),
        pdus: Cell::new(0),
        seat,
        fd,
        reader_running: Cell::new(false),
        inline_enc: RefCell::new(writer::Encoded::default()),
    });
    let writer = glommio::spawn_local(writer(conn.clone(), Sender { fd, w, reg }));
    // Awaited, never dropped: glommio 0.9 does not free a task cancelled
    // by dropping its handle while it sleeps (176 bytes per connection).
    let watchdog = glommio::spawn_local(watchdog(conn.clone()));
    let stop = futures_lite::future::or(conn.read_loop(&mut rb), async {
        kill.wait().await;
        Stop::Killed
    })
    .await;
    conn.log_stop(stop);
    conn.finish_connection().await;
    writer.await;
    watchdog.await;
}

/// Socket options every connection gets: no Nagle, liveness probes, and
/// the configured buffers and congestion control (a failure is logged:
/// the connection still works).
fn tune_socket(shard: &Shard, stream: &TcpStream) {
    let _ = stream.set_nodelay(true);
    let fd = stream.as_raw_fd();
    if let Err(e) = socket::watch_liveness(fd) {
        log::warn!("cannot set TCP keepalive: {e}");
    }
    if shard.cfg.socket_buffer > 0 {
        if let Err(e) = socket::set_buffers(fd, shard.cfg.socket_buffer) {
            log::warn!("cannot set socket buffers: {e}");
        }
    }
    if let Some(cc) = &shard.cfg.tcp_congestion {
        if let Err(e) = socket::set_congestion(fd, cc) {
            log::warn!("cannot set TCP congestion control {cc}: {e}");
        }
    }
}

/// Connection setup (§3.3): the first PDU must be an ICReq, within a time
/// limit; it is answered with an ICResp. None if the connection ends here
/// (a bad ICReq is answered with a C2HTermReq first).
async fn handshake(
    shard: &Shard,
    rb: &mut Reader,
    rx: &RefCell<Rx<H2cXfer>>,
    w: &mut WriteHalf<TcpStream>,
    peer: SocketAddr,
) -> Option<IcReq> {
    let ic = futures_lite::future::or(async { Some(read_icreq(rb, rx).await) }, async {
        glommio::timer::sleep(shard.connect_timeout()).await;
        None
    })
    .await;
    let icreq = match ic {
        None => {
            log::warn!("{peer}: no ICReq within the connect timeout; closing");
            return None;
        }
        Some(Err(Stop::Fatal(e, hdr))) => {
            log::warn!("{peer}: bad ICReq ({e:?}); sending C2HTermReq");
            let mut b = Vec::new();
            pdu::encode_term_req(pdu_type::C2H_TERM_REQ, e, &hdr, &mut b);
            let _ = w.write_all(&b).await;
            let _ = w.close().await;
            return None;
        }
        Some(Err(_)) => return None,
        Some(Ok(ic)) => ic,
    };
    let resp = IcResp {
        pfv: 0,
        cpda: 0,
        digests: icreq.digests,
        maxh2cdata: shard.cfg.maxh2cdata,
    };
    w.write_all(&resp.encode()).await.ok()?;
    Some(icreq)
}

async fn read_icreq(rb: &mut Reader, rx: &RefCell<Rx<H2cXfer>>) -> Result<IcReq, Stop> {
    if !rb.next_pdu().await? {
        return Err(Stop::Eof);
    }
    let (pdu, _) = read_header(rb, rx, 0).await?;
    match pdu {
        Pdu::IcReq(ic) => Ok(ic),
        _ => unreachable!("the first PDU is an ICReq or a fatal error"),
    }
}

/// Read one PDU's header and have `rx` check it (borrowed only between
/// reads: tasks of the queue open transfers meanwhile): what it is, and its
/// layout.
async fn read_header(
    rb: &mut Reader,
    rx: &RefCell<Rx<H2cXfer>>,
    max_icd: usize,
) -> Result<(Pdu, Layout), Stop> {
    rb.fill(CH_LEN).await?;
    let mut hdr = [0u8; pdu::MAX_HEADER_LEN + DIGEST_LEN];
    hdr[..CH_LEN].copy_from_slice(rb.take(CH_LEN));
    let ch = hdr[..CH_LEN].try_into().unwrap();
    let l = rx.borrow_mut().begin(ch, max_icd)?;
    let ht = l.header_total();
    rb.fill(ht - CH_LEN).await?;
    hdr[CH_LEN..ht].copy_from_slice(rb.take(ht - CH_LEN));
    let pdu = rx.borrow_mut().header(&hdr[..ht])?;
    rb.skip(l.pad_len()).await?;
    Ok((pdu, l))
}

impl Conn {
    /// Whether a completion may skip the writer (`writer::send_inline`):
    /// it comes from a command's own task after waiting on storage (not
    /// from the reader, whose burst of completions is better sent in one
    /// batch), no other command of the queue runs or waits for memory (a
    /// QD1 host), the writer waits with nothing queued, and the connection
    /// is not closing (so the socket is open).
    fn may_send_inline(&self, item: &Out) -> bool {
        let Out::Done { resp, .. } = item else {
            return false;
        };
        !resp.close_after
            && !self.reader_running.get()
            && self.executing.get() == 1
            && self.waiting_mem.get() == 0
            && self.out.queued() == 0
            && self.out.writer_idle()
            && !self.out.stalled()
            && !self.out.is_closed()
            && !self.kill.fired()
    }

    fn max_in_capsule(&self) -> usize {
        let st = self.q.state.borrow();
        match st.binding {
            Some(Binding::Io { .. }) => self.shard.cfg.in_capsule_data as usize,
            _ => ADMIN_IN_CAPSULE_DATA.max(self.shard.cfg.in_capsule_data) as usize,
        }
    }

    /// How many replies to let queue before the writer sends them. Alone on
    /// its core, a queue splits the host's burst in two (`batch_for_depth`:
    /// half the host's queue depth, up to `FLOW_BATCH`; null 4 KiB
    /// randread, our client: QD8 447k -> 553k, QD16 636k -> 855k, QD32 and
    /// QD64 within 3%, RAM 128 KiB QD8 41.8k -> 47.3k with BBR but 4% fewer
    /// with cubic, where one large send suits better). With other busy
    /// queues on the core the core already works while each host does, and
    /// splitting only costs sends (4 queues x QD8: 739k -> 580k), so
    /// `FLOW_BATCH` stays.
    fn flow_batch(&self, rb: &Reader) -> usize {
        let outstanding = self.q.outstanding() as usize;
        let io = matches!(self.q.state.borrow().binding, Some(Binding::Io { .. }));
        let active = io && outstanding > 0;
        if self.active.get() != active {
            self.active.set(active);
            let n = self.shard.active_io.get();
            assert!(active || n > 0, "a queue going idle was counted active");
            self.shard.active_io.set(if active { n + 1 } else { n - 1 });
        }
        if self.shard.active_io.get() > 1 {
            return FLOW_BATCH;
        }
        // Commands here now: outstanding, and those already received (a
        // capsule without data is CH_LEN + SQE_LEN bytes; with data the
        // count is too high, which only keeps FLOW_BATCH).
        let depth = self
            .depth
            .observe(outstanding + rb.buffered() / (CH_LEN + SQE_LEN));
        batch_for_depth(depth)
    }

    async fn read_loop(self: &Rc<Self>, rb: &mut Reader) -> Stop {
        // What the socket had given when the writer last had its turn.
        let mut mark = rb.received();
        loop {
            // A host pipelining many commands sends them in one burst; when
            // the replies to part of it are ready, let the writer send them
            // before reading on, so that the host works on those while this
            // core works on the rest, instead of each side waiting for the
            // other's whole batch (`flow::writer_due`).
            let queued = self.out.queued();
            if queued == 0 {
                mark = rb.received();
            }
            let batch = self.flow_batch(rb);
            if writer_due(queued, batch, rb.received() - mark) && self.out.writer_idle() {
                mark = rb.received();
                futures_lite::future::yield_now().await;
            }
            match self.read_pdu(rb).await {
                Ok(()) => {}
                Err(s) => return s,
            }
        }
    }

    /// Read and act on one PDU.
    async fn read_pdu(self: &Rc<Self>, rb: &mut Reader) -> Result<(), Stop> {
        // Waiting for the next PDU is not bounded (an idle queue is fine);
        // once its first byte is here, the watchdog times the rest.
        if !rb.next_pdu().await? {
            return Err(Stop::Eof);
        }
        self.pdu_open.set(true);
        let r = self.read_pdu_body(rb).await;
        self.pdu_open.set(false);
        self.pdus.set(self.pdus.get() + 1);
        r
    }

    async fn read_pdu_body(self: &Rc<Self>, rb: &mut Reader) -> Result<(), Stop> {
        let (pdu, l) = read_header(rb, &self.rx, self.max_in_capsule()).await?;
        match pdu {
            Pdu::Capsule { sqe, data } => self.on_capsule(rb, &l, sqe, data).await,
            Pdu::H2cData { ttag, at, len } => self.on_h2c_data(rb, &l, ttag, at, len).await,
            Pdu::Term { error, data } => {
                rb.skip(data).await?;
                Err(Stop::HostTerm(error))
            }
            Pdu::IcReq(_) => unreachable!("a second ICReq is a fatal error"),
        }
    }

    /// Read `len` bytes of data (plus its digest) into `buf[at..]`; returns
    /// whether the data digest matched.
    async fn read_data(
        &self,
        rb: &mut Reader,
        l: &Layout,
        buf: &mut DmaBuffer,
        at: usize,
    ) -> Result<bool, Stop> {
        let dst = &mut buf.as_bytes_mut()[at..at + l.data_len];
        rb.read_into(dst).await?;
        if !l.ddgst {
            return Ok(true);
        }
        rb.fill(DIGEST_LEN).await?;
        let want = u32::from_le_bytes(rb.take(DIGEST_LEN).try_into().unwrap());
        Ok(pdu::digest(dst) == want)
    }

    async fn on_capsule(
        self: &Rc<Self>,
        rb: &mut Reader,
        l: &Layout,
        sqe: Sqe,
        data_len: usize,
    ) -> Result<(), Stop> {
        let mut icd = None;
        let mut charge = None;
        let mut digest_ok = true;
        if data_len > 0 {
            charge = Some(self.charge_in_capsule(data_len).await);
            let mut b = dma_buffer(data_len);
            digest_ok = self.read_data(rb, l, &mut b, 0).await?;
            icd = Some(b);
        }
        let cid = sqe.cid();
        match self.q.admit(cid) {
            Admit::Accepted => {}
            Admit::CidConflict => {
                // Sent without freeing the CID: the command holding it
                // stays tracked.
                self.out.push(Out::Done {
                    cid,
                    resp: Response::status(Status::CID_CONFLICT),
                    max_len: 0,
                    _charge: None,
                });
                return Ok(());
            }
            Admit::Overflow => {
                let mut hdr = vec![0u8; CH_LEN + SQE_LEN];
                l.header.encode(&mut hdr[..CH_LEN]);
                hdr[CH_LEN..].copy_from_slice(&sqe.0);
                return Err(Stop::Fatal(
                    FatalError::new(fes::PDU_SEQUENCE_ERROR, field::TYPE),
                    hdr,
                ));
            }
        }
        if !digest_ok {
            self.complete(
                cid,
                Response::status(Status::TRANSIENT_TRANSPORT_ERROR),
                0,
                None,
            );
            return Ok(());
        }
        match self.plan(&sqe, icd.as_ref()) {
            Err(s) => {
                // The error log has it before the host sees the completion.
                let me = self.clone();
                glommio::spawn_local(async move {
                    me.q.log_failure(&sqe, s).await;
                    me.complete(cid, Response::status(s), 0, None);
                })
                .detach();
            }
            Ok(plan) => {
                // What gathers a write (`uring::Submit::Gather`).
                crate::storage::uring::burst_continues(rb.buffered() > 0);
                self.dispatch(sqe, plan, icd, charge)
            }
        }
        Ok(())
    }

    /// H2CData that `rx` checked: read it into its transfer's buffer; once
    /// the transfer is whole, run its command.
    async fn on_h2c_data(
        self: &Rc<Self>,
        rb: &mut Reader,
        l: &Layout,
        ttag: u16,
        at: usize,
        len: usize,
    ) -> Result<(), Stop> {
        debug_assert_eq!(len, l.data_len);
        let mut buf = (self.rx.borrow_mut().state_mut(ttag).buf.take())
            .expect("the buffer is in its transfer between PDUs");
        let ok = self.read_data(rb, l, &mut buf, at).await?;
        let done = {
            let mut rx = self.rx.borrow_mut();
            rx.state_mut(ttag).buf = Some(buf);
            rx.data_done(ok)
        };
        let Some((x, digest_failed)) = done else {
            return Ok(());
        };
        if digest_failed {
            self.complete(
                x.sqe.cid(),
                Response::status(Status::TRANSIENT_TRANSPORT_ERROR),
                0,
                None,
            );
        } else {
            crate::storage::uring::burst_continues(rb.buffered() > 0);
            self.spawn_execute(x.sqe, x.ns, x.buf, 0, x.charge);
        }
        Ok(())
    }

    /// Say why the reader stopped; a fatal transport error queues its
    /// C2HTermReq for the writer.
    fn log_stop(&self, stop: Stop) {
        let peer = self.q.peer;
        match stop {
            Stop::Eof => log::info!("{peer}: host closed the connection"),
            Stop::Killed => log::info!("{peer}: queue closed by the target"),
            Stop::Io(e) => log::info!("{peer}: connection error: {e}"),
            Stop::HostTerm(e) => log::warn!(
                "{peer}: host terminated the connection (H2CTermReq fes {:#x} fei {:#x})",
                e.fes,
                e.fei
            ),
            Stop::Fatal(e, hdr) => {
                log::warn!(
                    "{peer}: fatal transport error (fes {:#x} fei {:#x}); sending C2HTermReq",
                    e.fes,
                    e.fei
                );
                self.out.push(Out::Term(e, hdr));
            }
        }
    }

    /// Stop reading new commands: let in-flight ones finish, however long
    /// they take, then let the writer drain and release the queue's
    /// controller binding. Until then the qid (and, for an admin queue, the
    /// controller) stays taken: a write still running must not land after
    /// the host has reconnected and rewritten the same blocks.
    async fn finish_connection(self: &Rc<Self>) {
        // The queue is closing: commands waiting for memory give up (Command
        // Aborted due to SQ Deletion), the watchdog ends, and writes still
        // waiting for H2CData, which can never come now, release their
        // memory, which the waiting commands may be waiting for.
        self.kill.fire();
        self.rx.borrow_mut().close_all();
        // Writes still waiting for H2CData can never finish now: only
        // commands running or waiting for memory are waited for, whether
        // or not their completions can still be sent.
        let mut report = Instant::now() + DRAIN_REPORT_INTERVAL;
        while self.executing.get() + self.waiting_mem.get() > 0 {
            glommio::timer::sleep(Duration::from_millis(1)).await;
            if Instant::now() >= report {
                log::warn!(
                    "{}: queue {} closed with {} commands still running at the backing; its qid stays taken until they finish",
                    self.q.peer,
                    self.q.state.borrow().qid,
                    self.executing.get()
                );
                report += DRAIN_REPORT_INTERVAL;
            }
        }
        self.out.close();
        let (binding, qid) = {
            let mut st = self.q.state.borrow_mut();
            (st.binding.take(), st.qid)
        };
        match binding {
            Some(Binding::Admin(ctrl)) => {
                self.shard
                    .destroy_controller(ctrl.cntlid, "admin queue closed");
            }
            Some(Binding::Io { cntlid, token, .. }) => {
                log::info!("controller {cntlid}: I/O queue {qid} closed");
                self.shard.detach_io(cntlid, qid, token);
            }
            None => {}
        }
    }
}
