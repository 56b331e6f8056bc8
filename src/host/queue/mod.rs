//! One NVMe queue on one TCP connection: connection set-up (ICReq/ICResp,
//! Fabrics Connect), command slots, and the reader and writer tasks.
//!
//! Shape of a connection:
//!
//! - `Conn` holds all shared state behind `Rc`: the slot table (one slot per
//!   command in flight, indexed by the low bits of the CID), the outgoing byte
//!   queue, and the failure, once there is one.
//! - The writer task sends whatever commands have queued in `Conn::tx`, all of
//!   it per wake-up, so commands submitted in the same executor tick share a
//!   `send`.
//! - The reader task parses PDUs (through a 64 KiB receive buffer; large data
//!   goes straight into the command's buffer), checks them against the command
//!   they name, and hands completions and R2Ts to the waiting `submit`.
//! - `submit` itself answers R2Ts, since only it holds the caller's data.
//!
//! The socket is shared by the two tasks as `Rc<RefCell<TcpStream>>`, borrowed
//! only inside a single `poll_read`/`poll_write` call, never across an await.

mod handle;
mod reader;

use super::{Completion, HostConfig, HostError};
use crate::io_wait::IoWait;
use crate::transport::recv::RecvBuf;
use crate::transport::socket::{Recv, RecvPoll};
use crate::wire::command::{admin, fctype, sgl, Cqe, SglDescriptor, Sqe};
use crate::wire::fabrics::{ConnectCmd, ConnectData, CATTR_DISABLE_SQ_FLOW, NQN_MAX_LEN};
use crate::wire::pdu::{
    self, decode_term_req, encode_capsule_cmd, encode_data_header_aligned, encode_term_req, fes,
    field, flags, header_total, layout, pdu_type, CommonHeader, DataHeader, Digests, Direction,
    FatalError, IcReq, IcResp, CH_LEN, CMD_HLEN, DIGEST_LEN, IC_HLEN, MAX_HEADER_LEN,
};
use crate::wire::status::Status;
use byteorder::{ByteOrder, LittleEndian as LE};
use futures_lite::io::{AsyncRead, AsyncWrite};
use glommio::net::TcpStream;
use glommio::sync::Semaphore;
use glommio::task::JoinHandle;
pub use handle::Queue;
use reader::reader_task;
use std::cell::{Cell, RefCell};
use std::future::poll_fn;
use std::io;
use std::os::unix::io::{AsRawFd, RawFd};
use std::pin::Pin;
use std::rc::{Rc, Weak};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

/// Initial capacity of the writer's send buffer.
const TX_BUF_LEN: usize = 64 * 1024;
/// SQE byte 1, PSDT = 01b: the data pointer is an SGL (required by fabrics).
const PSDT_SGL: u8 = 0x40;
/// Smallest MAXH2CDATA a controller may report (NVMe/TCP 1.0 §3.6.2.3).
const MAXH2CDATA_MIN: u32 = 4096;
/// Offset of the CID inside a CapsuleResp PDU (8-byte header + CQE byte 12).
const RESP_CID_FIELD: u32 = 8 + 12;

type Stream = Rc<RefCell<TcpStream>>;

async fn sock_read(s: &Stream, buf: &mut [u8]) -> io::Result<usize> {
    poll_fn(|cx| Pin::new(&mut *s.borrow_mut()).poll_read(cx, buf)).await
}

async fn sock_write_all(s: &Stream, mut buf: &[u8]) -> io::Result<()> {
    while !buf.is_empty() {
        let n = poll_fn(|cx| Pin::new(&mut *s.borrow_mut()).poll_write(cx, buf)).await?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        buf = &buf[n..];
    }
    Ok(())
}

/// Socket reads that poll while traffic flows and sleep on io_uring when
/// it stops (see `HostConfig::idle_poll`).
struct RecvPoller {
    poll: Option<RecvPoll>,
}

impl RecvPoller {
    async fn read(&mut self, s: &Stream, buf: &mut [u8]) -> io::Result<usize> {
        let Some(p) = &mut self.poll else {
            return sock_read(s, buf).await;
        };
        loop {
            if let Some(n) = p.recv(buf).await? {
                return Ok(n);
            }
            if let Some(n) = p.parked(sock_read(s, buf)).await? {
                return Ok(n);
            }
        }
    }
}

/// The socket's reads, for the receive buffer the target uses too
/// (`transport::recv`: small PDUs are parsed out of one buffer, large
/// payloads are read straight into their destination).
struct HostRecv {
    s: Stream,
    poll: RecvPoller,
}

impl Recv for HostRecv {
    async fn recv(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.poll.read(&self.s, buf).await
    }
}

type Rx = RecvBuf<HostRecv>;

fn new_rx(s: Stream, idle_poll: Duration) -> Rx {
    let fd = s.borrow().as_raw_fd();
    RecvBuf::new(HostRecv {
        s,
        poll: RecvPoller {
            poll: (!idle_poll.is_zero()).then(|| RecvPoll::new(fd, idle_poll)),
        },
    })
}

/// Why a connection is down; every waiting command gets it as a `HostError`.
#[derive(Debug, Clone)]
enum Failure {
    Closed,
    Io(io::ErrorKind, String),
    Protocol(String),
    TermReq(FatalError),
}

impl Failure {
    fn to_error(&self) -> HostError {
        match self {
            Failure::Closed => HostError::Closed,
            Failure::Io(k, m) => HostError::Io(io::Error::new(*k, m.clone())),
            Failure::Protocol(m) => HostError::Protocol(m.clone()),
            Failure::TermReq(e) => HostError::TermReq(*e),
        }
    }
}

/// Per-command state, one per possible command in flight.
#[derive(Default)]
struct Slot {
    /// Bumped on every use: the high CID bits, so a late PDU for a finished
    /// command does not match its successor.
    gen: u16,
    cid: u16,
    active: bool,
    /// The submitting future was dropped while the target still owns the
    /// command: free the slot when it completes.
    abandoned: bool,
    waker: Option<Waker>,
    /// Data in: buffer (taken by the reader while it fills a part), expected
    /// length, bytes received so far (C2HData must arrive in order).
    rx: Vec<u8>,
    rx_len: usize,
    rx_got: usize,
    ddgst_error: bool,
    /// Data out moved by R2T: its length (0 when none or in-capsule), the end
    /// of the last R2T, and an R2T not yet answered.
    tx_len: usize,
    r2t_end: usize,
    r2t: Option<DataHeader>,
    done: Option<Result<Cqe, HostError>>,
}

enum Event {
    R2t(DataHeader),
    Done(Result<Cqe, HostError>),
}

/// Why the reader stopped.
enum ReadStop {
    Io(io::Error),
    TermReq(FatalError),
    /// A PDU broke the protocol: answer with an H2CTermReq and close.
    Fatal(FatalError, String),
}

impl From<io::Error> for ReadStop {
    fn from(e: io::Error) -> Self {
        ReadStop::Io(e)
    }
}

fn fatal(fes: u16, fei: u32, msg: String) -> ReadStop {
    ReadStop::Fatal(FatalError::new(fes, fei), msg)
}

/// State shared by the queue handle, its reader and writer tasks and its
/// submitters.
pub(crate) struct Conn {
    qid: u16,
    queue_size: u16,
    digests: Digests,
    maxh2cdata: u32,
    /// Alignment of data in the PDUs we send, from ICResp CPDA.
    cpda_align: usize,
    /// Alignment we asked of the controller's data PDUs (ICReq HPDA).
    hpda_align: usize,
    fd: RawFd,
    stream: Stream,
    in_capsule_limit: Cell<usize>,
    slots: RefCell<Vec<Slot>>,
    free: RefCell<Vec<u16>>,
    /// Counts free slots; closed when the connection fails.
    sem: Semaphore,
    idx_bits: u32,
    tx: RefCell<Vec<u8>>,
    tx_waker: Cell<Option<Waker>>,
    writer_busy: Cell<bool>,
    failed: RefCell<Option<Failure>>,
}

impl Conn {
    fn idx_mask(&self) -> u16 {
        ((1u32 << self.idx_bits) - 1) as u16
    }

    fn is_failed(&self) -> bool {
        self.failed.borrow().is_some()
    }

    fn error(&self) -> HostError {
        self.failed
            .borrow()
            .as_ref()
            .map(Failure::to_error)
            .unwrap_or(HostError::Closed)
    }

    fn check(&self) -> Result<(), HostError> {
        match self.failed.borrow().as_ref() {
            Some(f) => Err(f.to_error()),
            None => Ok(()),
        }
    }

    fn kick_writer(&self) {
        if let Some(w) = self.tx_waker.take() {
            w.wake();
        }
    }

    fn shutdown_socket(&self) {
        // SAFETY: `fd` belongs to `self.stream`, which this `Conn` keeps open;
        // shutdown(2) touches no memory.
        unsafe {
            libc::shutdown(self.fd, libc::SHUT_RDWR);
        }
    }

    /// Marks the connection failed (the first failure wins), shuts the socket
    /// (after sending `term`, an H2CTermReq, when the writer is idle) and
    /// wakes every command and slot waiter.
    fn fail(&self, f: Failure, term: Option<Vec<u8>>) {
        if self.is_failed() {
            return;
        }
        *self.failed.borrow_mut() = Some(f);
        self.sem.close();
        let send_term = {
            let mut tx = self.tx.borrow_mut();
            tx.clear();
            match term {
                Some(t) if !self.writer_busy.get() => {
                    tx.extend_from_slice(&t);
                    true
                }
                _ => false,
            }
        };
        if !send_term {
            self.shutdown_socket();
        }
        self.kick_writer();
        let mut wakers = Vec::new();
        let mut abandoned = Vec::new();
        for (i, s) in self.slots.borrow_mut().iter_mut().enumerate() {
            if s.active {
                if s.abandoned {
                    abandoned.push(i);
                } else if let Some(w) = s.waker.take() {
                    wakers.push(w);
                }
            }
        }
        for i in abandoned {
            self.release(i);
        }
        for w in wakers {
            w.wake();
        }
    }

    /// Closes on the host's behalf: fails everything with `Closed` (unless it
    /// failed already) and shuts the socket even if a TermReq is pending.
    fn close(&self) {
        self.fail(Failure::Closed, None);
        self.shutdown_socket();
    }

    fn release(&self, idx: usize) {
        {
            let mut slots = self.slots.borrow_mut();
            let s = &mut slots[idx];
            let gen = s.gen;
            *s = Slot::default();
            s.gen = gen;
        }
        self.free.borrow_mut().push(idx as u16);
        self.sem.signal(1);
    }

    /// The active, non-finished slot a CID names.
    fn slot_index(&self, slots: &[Slot], cid: u16) -> Option<usize> {
        let idx = (cid & self.idx_mask()) as usize;
        let s = slots.get(idx)?;
        (s.active && s.cid == cid && s.done.is_none()).then_some(idx)
    }

    /// Records a command's result and wakes its submitter (or frees the slot
    /// when nobody waits any more).
    fn complete(&self, idx: usize, res: Result<Cqe, HostError>) {
        let (abandoned, waker) = {
            let mut slots = self.slots.borrow_mut();
            let s = &mut slots[idx];
            if s.abandoned {
                (true, None)
            } else {
                s.done = Some(res);
                (false, s.waker.take())
            }
        };
        if abandoned {
            self.release(idx);
        }
        if let Some(w) = waker {
            w.wake();
        }
    }

    /// Pads the in-capsule data of the CapsuleCmd just encoded at
    /// `out[start..]` (header and header digest, no data yet) to the
    /// controller's data alignment (CPDA).
    fn align_data(&self, out: &mut Vec<u8>, start: usize, hlen: usize) {
        let ht = header_total(hlen, self.digests);
        let pdo = ht.next_multiple_of(self.cpda_align);
        let pad = pdo - ht;
        if pad == 0 {
            return;
        }
        let mut ch = CommonHeader::decode(&out[start..start + CH_LEN]);
        ch.pdo = pdo as u8;
        ch.plen += pad as u32;
        ch.encode(&mut out[start..start + CH_LEN]);
        if self.digests.header {
            let crc = pdu::digest(&out[start..start + hlen]);
            LE::write_u32(&mut out[start + hlen..start + hlen + DIGEST_LEN], crc);
        }
        out.resize(out.len() + pad, 0);
    }

    fn push_data(&self, out: &mut Vec<u8>, data: &[u8]) {
        out.extend_from_slice(data);
        if self.digests.data {
            out.extend_from_slice(&pdu::digest(data).to_le_bytes());
        }
    }

    /// Queues H2CData PDUs answering an R2T, split at MAXH2CDATA.
    fn send_h2c(&self, cid: u16, r2t: DataHeader, data: &[u8]) -> Result<(), HostError> {
        self.check()?;
        let start = r2t.offset as usize;
        let end = start + r2t.length as usize;
        let chunk = self.maxh2cdata as usize;
        {
            let mut tx = self.tx.borrow_mut();
            let mut pos = start;
            while pos < end {
                let n = (end - pos).min(chunk);
                let last = pos + n == end;
                let dh = DataHeader {
                    cccid: cid,
                    ttag: r2t.ttag,
                    offset: pos as u32,
                    length: n as u32,
                };
                let f = if last { flags::LAST_PDU } else { 0 };
                encode_data_header_aligned(
                    pdu_type::H2C_DATA,
                    dh,
                    f,
                    self.digests,
                    self.cpda_align,
                    &mut tx,
                );
                self.push_data(&mut tx, &data[pos..pos + n]);
                pos += n;
            }
        }
        self.kick_writer();
        Ok(())
    }

    fn poll_cmd(&self, idx: usize, cx: &mut Context<'_>) -> Poll<Event> {
        let mut slots = self.slots.borrow_mut();
        let s = &mut slots[idx];
        if let Some(res) = s.done.take() {
            return Poll::Ready(Event::Done(res));
        }
        if let Some(dh) = s.r2t.take() {
            return Poll::Ready(Event::R2t(dh));
        }
        if let Some(f) = self.failed.borrow().as_ref() {
            return Poll::Ready(Event::Done(Err(f.to_error())));
        }
        match &s.waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            _ => s.waker = Some(cx.waker().clone()),
        }
        Poll::Pending
    }

    /// Sends one command and waits for its completion. `force_in_capsule`
    /// sends `data_out` in the capsule whatever the limit (Connect);
    /// `rx_buf` is reused for the data in.
    async fn submit(
        &self,
        mut sqe: Sqe,
        data_out: Option<&[u8]>,
        data_in_len: usize,
        rx_buf: Option<Vec<u8>>,
        force_in_capsule: bool,
    ) -> Result<Completion, HostError> {
        let out = data_out.unwrap_or(&[]);
        if !out.is_empty() && data_in_len > 0 {
            return Err(HostError::Invalid(
                "a command moves data in one direction only".into(),
            ));
        }
        if out.len() > u32::MAX as usize || data_in_len > u32::MAX as usize {
            return Err(HostError::Invalid("data longer than 4 GiB".into()));
        }
        self.check()?;
        if self.sem.acquire(1).await.is_err() {
            return Err(self.error());
        }
        let Some(idx) = self.free.borrow_mut().pop().map(usize::from) else {
            // The semaphore counts free slots: this cannot happen.
            self.sem.signal(1);
            return Err(HostError::Protocol("no free command slot".into()));
        };
        let mut guard = InFlight {
            conn: self,
            idx,
            sent: false,
            finished: false,
        };
        self.check()?;

        let in_capsule =
            !out.is_empty() && (force_in_capsule || out.len() <= self.in_capsule_limit.get());
        let tx_len = if in_capsule { 0 } else { out.len() };
        let cid = self.arm_slot(idx, rx_buf, data_in_len, tx_len);
        self.send_capsule(&mut sqe, cid, out, data_in_len, in_capsule);
        guard.sent = true;

        loop {
            match poll_fn(|cx| self.poll_cmd(idx, cx)).await {
                Event::R2t(dh) => {
                    self.send_h2c(cid, dh, out)?;
                }
                Event::Done(res) => {
                    let data = std::mem::take(&mut self.slots.borrow_mut()[idx].rx);
                    guard.finished = true;
                    self.release(idx);
                    let cqe = res?;
                    if !cqe.status.is_success() {
                        return Err(HostError::Status(cqe.status, cqe));
                    }
                    return Ok(Completion { cqe, data });
                }
            }
        }
    }

    /// Makes slot `idx` active for a new command; returns its CID (the slot
    /// index, with a generation in the bits above it so a late completion
    /// of the slot's previous command is not taken for this one).
    fn arm_slot(
        &self,
        idx: usize,
        rx_buf: Option<Vec<u8>>,
        data_in_len: usize,
        tx_len: usize,
    ) -> u16 {
        let mut slots = self.slots.borrow_mut();
        let s = &mut slots[idx];
        s.gen = s.gen.wrapping_add(1);
        let gen_bits = 16 - self.idx_bits;
        let gen = if gen_bits == 0 {
            0
        } else {
            u32::from(s.gen) & ((1u32 << gen_bits) - 1)
        };
        s.cid = ((gen << self.idx_bits) | idx as u32) as u16;
        s.active = true;
        s.rx = match rx_buf {
            Some(mut b) => {
                b.resize(data_in_len, 0);
                b
            }
            None => vec![0u8; data_in_len],
        };
        s.rx_len = data_in_len;
        s.tx_len = tx_len;
        s.cid
    }

    /// Queues the CapsuleCmd (with its in-capsule data) and wakes the writer.
    fn send_capsule(
        &self,
        sqe: &mut Sqe,
        cid: u16,
        out: &[u8],
        data_in_len: usize,
        in_capsule: bool,
    ) {
        sqe.set_cid(cid);
        sqe.set_flags((sqe.flags() & 0x3F) | PSDT_SGL);
        let (sgl_id, sgl_len) = if in_capsule {
            (sgl::DATA_BLOCK_OFFSET, out.len())
        } else {
            (sgl::TRANSPORT_DATA_BLOCK, out.len().max(data_in_len))
        };
        sqe.set_sgl(SglDescriptor {
            addr: 0,
            length: sgl_len as u32,
            id: sgl_id,
        });
        {
            let icd = if in_capsule { out } else { &[] };
            let mut tx = self.tx.borrow_mut();
            let at = tx.len();
            encode_capsule_cmd(&sqe.0, icd.len(), self.digests, &mut tx);
            if !icd.is_empty() {
                self.align_data(&mut tx, at, CMD_HLEN);
                self.push_data(&mut tx, icd);
            }
        }
        self.kick_writer();
    }
}

/// Frees a command's slot when its `submit` future ends or is dropped.
struct InFlight<'a> {
    conn: &'a Conn,
    idx: usize,
    sent: bool,
    finished: bool,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        let c = self.conn;
        let keep = self.sent && !c.is_failed() && {
            let mut slots = c.slots.borrow_mut();
            let s = &mut slots[self.idx];
            s.waker = None;
            if s.done.is_some() {
                false
            } else {
                // The target still owns the CID: keep it until it completes.
                s.abandoned = true;
                true
            }
        };
        if !keep {
            c.release(self.idx);
        }
    }
}

async fn writer_task(conn: Rc<Conn>) {
    let mut out = Vec::with_capacity(TX_BUF_LEN);
    loop {
        let more = poll_fn(|cx| {
            if !conn.tx.borrow().is_empty() {
                return Poll::Ready(true);
            }
            if conn.is_failed() {
                return Poll::Ready(false);
            }
            conn.tx_waker.set(Some(cx.waker().clone()));
            Poll::Pending
        })
        .await;
        if !more {
            break;
        }
        std::mem::swap(&mut out, &mut *conn.tx.borrow_mut());
        conn.writer_busy.set(true);
        // A full socket waits on io_uring: see `IoWait`.
        let r = {
            let _io = IoWait::new();
            sock_write_all(&conn.stream, &out).await
        };
        conn.writer_busy.set(false);
        out.clear();
        if let Err(e) = r {
            conn.fail(Failure::Io(e.kind(), e.to_string()), None);
            break;
        }
    }
    conn.shutdown_socket();
}
