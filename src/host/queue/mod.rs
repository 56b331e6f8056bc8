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

use super::{Completion, HostConfig, HostError};
use crate::io_wait::IoWait;
use crate::transport::socket::RecvPoll;
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
use std::cell::{Cell, RefCell};
use std::future::poll_fn;
use std::io;
use std::os::unix::io::{AsRawFd, RawFd};
use std::pin::Pin;
use std::rc::{Rc, Weak};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

/// Size of the reader's receive buffer.
const RX_BUF_LEN: usize = 64 * 1024;
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

/// Buffered reads from the socket: small PDUs are parsed out of one 64 KiB
/// buffer, large reads bypass it.
struct Rx {
    s: Stream,
    poll: RecvPoller,
    buf: Box<[u8]>,
    head: usize,
    tail: usize,
}

impl Rx {
    fn new(s: Stream, idle_poll: Duration) -> Rx {
        let fd = s.borrow().as_raw_fd();
        Rx {
            s,
            poll: RecvPoller {
                poll: (!idle_poll.is_zero()).then(|| RecvPoll::new(fd, idle_poll)),
            },
            buf: vec![0u8; RX_BUF_LEN].into_boxed_slice(),
            head: 0,
            tail: 0,
        }
    }

    fn take_buffered(&mut self, dst: &mut [u8]) -> usize {
        let n = (self.tail - self.head).min(dst.len());
        dst[..n].copy_from_slice(&self.buf[self.head..self.head + n]);
        self.head += n;
        n
    }

    /// Fills `dst` completely; EOF before that is `UnexpectedEof`.
    async fn read_exact(&mut self, dst: &mut [u8]) -> io::Result<()> {
        let mut done = self.take_buffered(dst);
        while done < dst.len() {
            let rest = &mut dst[done..];
            if rest.len() >= RX_BUF_LEN / 2 {
                let n = self.poll.read(&self.s, rest).await?;
                if n == 0 {
                    return Err(io::ErrorKind::UnexpectedEof.into());
                }
                done += n;
            } else {
                self.head = 0;
                self.tail = 0;
                let n = self.poll.read(&self.s, &mut self.buf).await?;
                if n == 0 {
                    return Err(io::ErrorKind::UnexpectedEof.into());
                }
                self.tail = n;
                done += self.take_buffered(&mut dst[done..]);
            }
        }
        Ok(())
    }

    /// Discards `n` bytes (padding, TermReq data).
    async fn skip(&mut self, mut n: usize) -> io::Result<()> {
        let mut scratch = [0u8; 256];
        while n > 0 {
            let k = n.min(scratch.len());
            self.read_exact(&mut scratch[..k]).await?;
            n -= k;
        }
        Ok(())
    }
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
        let cid = {
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
            s.tx_len = if in_capsule { 0 } else { out.len() };
            s.cid
        };
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

    /// The reader task's loop: returns why it stopped.
    async fn read_loop(&self, rx: &mut Rx) -> (ReadStop, Vec<u8>) {
        let mut hdr = [0u8; MAX_HEADER_LEN + DIGEST_LEN];
        loop {
            if let Err(e) = rx.read_exact(&mut hdr[..CH_LEN]).await {
                return (e.into(), Vec::new());
            }
            let ch = CommonHeader::decode(&hdr[..CH_LEN]);
            let l = match layout(ch, Direction::ControllerToHost, self.digests, usize::MAX) {
                Ok(l) => l,
                Err(e) => {
                    let msg = format!("bad PDU header {ch:?}");
                    return (ReadStop::Fatal(e, msg), hdr[..CH_LEN].to_vec());
                }
            };
            let ht = l.header_total();
            if let Err(e) = rx.read_exact(&mut hdr[CH_LEN..ht]).await {
                return (e.into(), Vec::new());
            }
            let hdr = &hdr[..ht];
            if l.hdgst {
                let got = LE::read_u32(&hdr[l.hlen..]);
                if got != pdu::digest(&hdr[..l.hlen]) {
                    let stop = fatal(
                        fes::HEADER_DIGEST_ERROR,
                        got,
                        format!("header digest error in PDU type {:#x}", ch.pdu_type),
                    );
                    return (stop, hdr[..l.hlen].to_vec());
                }
            }
            let r = match ch.pdu_type {
                pdu_type::CAPSULE_RESP => self.on_capsule_resp(hdr),
                pdu_type::R2T => self.on_r2t(hdr),
                pdu_type::C2H_DATA => self.on_c2h_data(&l, hdr, rx).await,
                pdu_type::C2H_TERM_REQ => {
                    let _ = rx.skip(l.data_len).await;
                    Err(ReadStop::TermReq(decode_term_req(hdr)))
                }
                _ => Err(fatal(
                    fes::PDU_SEQUENCE_ERROR,
                    field::TYPE,
                    format!("unexpected PDU type {:#x}", ch.pdu_type),
                )),
            };
            if let Err(stop) = r {
                return (stop, hdr[..l.hlen].to_vec());
            }
        }
    }

    fn on_capsule_resp(&self, hdr: &[u8]) -> Result<(), ReadStop> {
        let cqe = Cqe::decode(&hdr[8..24]);
        let (idx, res) = {
            let slots = self.slots.borrow();
            let Some(idx) = self.slot_index(&slots, cqe.cid) else {
                return Err(fatal(
                    fes::INVALID_HEADER_FIELD,
                    RESP_CID_FIELD,
                    format!("CapsuleResp for unknown CID {}", cqe.cid),
                ));
            };
            let s = &slots[idx];
            let res = if s.ddgst_error {
                Err(HostError::Protocol(format!(
                    "data digest error in C2HData of CID {}",
                    cqe.cid
                )))
            } else if cqe.status.is_success() && s.r2t_end != s.tx_len {
                Err(HostError::Protocol(format!(
                    "CID {} completed after asking for {} of {} data bytes",
                    cqe.cid, s.r2t_end, s.tx_len
                )))
            } else if cqe.status.is_success() && s.rx_got != s.rx_len {
                Err(HostError::Protocol(format!(
                    "CID {} completed after {} of {} data bytes",
                    cqe.cid, s.rx_got, s.rx_len
                )))
            } else {
                Ok(cqe)
            };
            (idx, res)
        };
        self.complete(idx, res);
        Ok(())
    }

    fn on_r2t(&self, hdr: &[u8]) -> Result<(), ReadStop> {
        let dh = DataHeader::decode(hdr);
        let waker = {
            let mut slots = self.slots.borrow_mut();
            let Some(idx) = self.slot_index(&slots, dh.cccid) else {
                return Err(fatal(
                    fes::INVALID_HEADER_FIELD,
                    field::CCCID,
                    format!("R2T for unknown CID {}", dh.cccid),
                ));
            };
            let s = &mut slots[idx];
            if s.tx_len == 0 {
                return Err(fatal(
                    fes::INVALID_HEADER_FIELD,
                    field::CCCID,
                    format!("R2T for CID {}, which has no data to transfer", dh.cccid),
                ));
            }
            if s.r2t.is_some() {
                return Err(fatal(
                    fes::R2T_LIMIT_EXCEEDED,
                    field::CCCID,
                    format!("second outstanding R2T for CID {}", dh.cccid),
                ));
            }
            let (off, len) = (dh.offset as usize, dh.length as usize);
            if len == 0 || off < s.r2t_end || off + len > s.tx_len {
                return Err(fatal(
                    fes::DATA_OUT_OF_RANGE,
                    field::DATAO,
                    format!(
                        "R2T offset {off} length {len} for CID {} ({} bytes, {} requested)",
                        dh.cccid, s.tx_len, s.r2t_end
                    ),
                ));
            }
            if s.abandoned {
                // The data's owner is gone: the command cannot finish.
                return Err(fatal(
                    fes::PDU_SEQUENCE_ERROR,
                    field::CCCID,
                    format!("R2T for abandoned CID {}", dh.cccid),
                ));
            }
            s.r2t_end = off + len;
            s.r2t = Some(dh);
            s.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
        Ok(())
    }

    async fn on_c2h_data(&self, l: &pdu::Layout, hdr: &[u8], rx: &mut Rx) -> Result<(), ReadStop> {
        let dh = DataHeader::decode(hdr);
        if !l.pdo.is_multiple_of(self.hpda_align) {
            return Err(fatal(
                fes::INVALID_HEADER_FIELD,
                field::PDO,
                format!(
                    "C2HData PDO {} ignores HPDA alignment {}",
                    l.pdo, self.hpda_align
                ),
            ));
        }
        let f = l.header.flags;
        let len = l.data_len;
        let off = dh.offset as usize;
        let (mut buf, complete_now) = {
            let mut slots = self.slots.borrow_mut();
            let Some(idx) = self.slot_index(&slots, dh.cccid) else {
                return Err(fatal(
                    fes::INVALID_HEADER_FIELD,
                    field::CCCID,
                    format!("C2HData for unknown CID {}", dh.cccid),
                ));
            };
            let s = &mut slots[idx];
            if dh.length as usize != len {
                return Err(fatal(
                    fes::INVALID_HEADER_FIELD,
                    field::DATAL,
                    format!("C2HData DATAL {} but {len} data bytes", dh.length),
                ));
            }
            if off != s.rx_got || off + len > s.rx_len {
                return Err(fatal(
                    fes::DATA_OUT_OF_RANGE,
                    field::DATAO,
                    format!(
                        "C2HData offset {off} length {len} for CID {} expecting offset {} of {}",
                        dh.cccid, s.rx_got, s.rx_len
                    ),
                ));
            }
            let success = f & flags::SUCCESS != 0;
            if success && (f & flags::LAST_PDU == 0 || off + len != s.rx_len) {
                return Err(fatal(
                    fes::INVALID_HEADER_FIELD,
                    field::FLAGS,
                    format!("C2HData SUCCESS flag before the end of CID {}", dh.cccid),
                ));
            }
            (std::mem::take(&mut s.rx), success)
        };
        rx.skip(l.pad_len()).await?;
        rx.read_exact(&mut buf[off..off + len]).await?;
        let mut digest_ok = true;
        if l.ddgst {
            let mut d = [0u8; DIGEST_LEN];
            rx.read_exact(&mut d).await?;
            digest_ok = u32::from_le_bytes(d) == pdu::digest(&buf[off..off + len]);
        }
        let idx = {
            let mut slots = self.slots.borrow_mut();
            // The slot is still ours unless the connection failed meanwhile.
            let Some(idx) = self.slot_index(&slots, dh.cccid) else {
                return Ok(());
            };
            let s = &mut slots[idx];
            s.rx = buf;
            s.rx_got += len;
            s.ddgst_error |= !digest_ok;
            idx
        };
        if complete_now {
            let res = if digest_ok {
                Ok(Cqe {
                    cid: dh.cccid,
                    sqid: self.qid,
                    status: Status::SUCCESS,
                    ..Cqe::default()
                })
            } else {
                Err(HostError::Protocol(format!(
                    "data digest error in C2HData of CID {}",
                    dh.cccid
                )))
            };
            self.complete(idx, res);
        }
        Ok(())
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

async fn reader_task(conn: Rc<Conn>, mut rx: Rx) {
    let (stop, hdr) = conn.read_loop(&mut rx).await;
    match stop {
        ReadStop::Io(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
            conn.fail(Failure::Closed, None)
        }
        ReadStop::Io(e) => conn.fail(Failure::Io(e.kind(), e.to_string()), None),
        ReadStop::TermReq(e) => conn.fail(Failure::TermReq(e), None),
        ReadStop::Fatal(e, msg) => {
            log::warn!("qid {}: {msg}; closing", conn.qid);
            let mut term = Vec::new();
            encode_term_req(pdu_type::H2C_TERM_REQ, e, &hdr, &mut term);
            conn.fail(Failure::Protocol(msg), Some(term));
        }
    }
}

async fn writer_task(conn: Rc<Conn>) {
    let mut out = Vec::with_capacity(RX_BUF_LEN);
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

/// ICReq / ICResp exchange on a fresh connection.
async fn initialize(stream: &Stream, rx: &mut Rx, cfg: &HostConfig) -> Result<IcResp, HostError> {
    let req = IcReq {
        pfv: 0,
        hpda: cfg.hpda,
        digests: cfg.digests,
        maxr2t: 0,
    };
    sock_write_all(stream, &req.encode()).await?;
    let eof = |e: io::Error| {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            HostError::Closed
        } else {
            HostError::Io(e)
        }
    };
    let mut h = [0u8; IC_HLEN];
    rx.read_exact(&mut h[..CH_LEN]).await.map_err(eof)?;
    let ch = CommonHeader::decode(&h);
    let l = layout(ch, Direction::ControllerToHost, Digests::default(), 0)
        .map_err(|e| HostError::Protocol(format!("bad ICResp header {ch:?}: {e:?}")))?;
    match ch.pdu_type {
        pdu_type::IC_RESP => {}
        pdu_type::C2H_TERM_REQ => {
            rx.read_exact(&mut h[CH_LEN..l.hlen]).await.map_err(eof)?;
            return Err(HostError::TermReq(decode_term_req(&h)));
        }
        t => {
            return Err(HostError::Protocol(format!(
                "expected ICResp, got PDU type {t:#x}"
            )))
        }
    }
    rx.read_exact(&mut h[CH_LEN..IC_HLEN]).await.map_err(eof)?;
    let resp = IcResp::decode(&h);
    if resp.pfv != 0 {
        return Err(HostError::Protocol(format!("ICResp PFV {}", resp.pfv)));
    }
    if resp.digests != cfg.digests {
        return Err(HostError::Protocol(format!(
            "asked for digests {:?}, target answered {:?}",
            cfg.digests, resp.digests
        )));
    }
    if resp.maxh2cdata < MAXH2CDATA_MIN {
        return Err(HostError::Protocol(format!(
            "ICResp MAXH2CDATA {} below {MAXH2CDATA_MIN}",
            resp.maxh2cdata
        )));
    }
    if resp.cpda > 31 {
        return Err(HostError::Protocol(format!("ICResp CPDA {}", resp.cpda)));
    }
    Ok(resp)
}

fn check_config(cfg: &HostConfig, qsize: u16) -> Result<(), HostError> {
    if qsize < 2 {
        return Err(HostError::Invalid(format!("queue size {qsize} below 2")));
    }
    if cfg.hpda > 31 {
        return Err(HostError::Invalid(format!("HPDA {} above 31", cfg.hpda)));
    }
    // A host may leave its NQN empty, as SPDK's does by default.
    for (what, nqn, min) in [("subsystem", &cfg.subnqn, 1), ("host", &cfg.hostnqn, 0)] {
        if nqn.len() < min || nqn.len() > NQN_MAX_LEN {
            return Err(HostError::Invalid(format!(
                "{what} NQN of {} bytes ({min}..={NQN_MAX_LEN})",
                nqn.len()
            )));
        }
    }
    Ok(())
}

struct Handle {
    conn: Rc<Conn>,
    reader: RefCell<Option<JoinHandle<()>>>,
    cntlid: Cell<u16>,
}

impl Drop for Handle {
    fn drop(&mut self) {
        self.conn.close();
    }
}

/// One NVMe queue = one TCP connection. Cheap to clone (an `Rc`); any number
/// of tasks may submit on it at once. The connection closes when the last
/// clone is dropped or on [`Queue::close`].
#[derive(Clone)]
pub struct Queue {
    h: Rc<Handle>,
}

/// A `Queue` reference that does not keep the connection open.
#[derive(Clone)]
pub(crate) struct WeakQueue(Weak<Handle>);

impl WeakQueue {
    pub(crate) fn upgrade(&self) -> Option<Queue> {
        self.0.upgrade().map(|h| Queue { h })
    }
}

impl Queue {
    /// Opens a TCP connection, exchanges ICReq/ICResp and sends Fabrics
    /// Connect for queue `qid` of controller `cntlid` (0xFFFF with qid 0 asks
    /// for a new controller). Returns the queue and the CNTLID from the
    /// Connect response. The admin queue gets `cfg.admin_queue_size` entries
    /// and `cfg.kato_ms`; I/O queues `cfg.queue_size` entries and KATO 0.
    pub async fn connect(
        cfg: &HostConfig,
        qid: u16,
        cntlid: u16,
    ) -> Result<(Queue, u16), HostError> {
        let qsize = if qid == 0 {
            cfg.admin_queue_size
        } else {
            cfg.queue_size
        };
        check_config(cfg, qsize)?;
        let tcp = TcpStream::connect(cfg.addr)
            .await
            .map_err(|e| HostError::Io(e.into()))?;
        tcp.set_nodelay(true).map_err(|e| HostError::Io(e.into()))?;
        let fd = tcp.as_raw_fd();
        let stream: Stream = Rc::new(RefCell::new(tcp));
        let mut rx = Rx::new(stream.clone(), cfg.idle_poll);
        let ic = initialize(&stream, &mut rx, cfg).await?;

        let slots = usize::from(qsize) - 1;
        let idx_bits = usize::BITS - (slots - 1).leading_zeros();
        let conn = Rc::new(Conn {
            qid,
            queue_size: qsize,
            digests: ic.digests,
            maxh2cdata: ic.maxh2cdata,
            cpda_align: (usize::from(ic.cpda) + 1) * 4,
            hpda_align: (usize::from(cfg.hpda) + 1) * 4,
            fd,
            stream,
            in_capsule_limit: Cell::new(if qid == 0 {
                crate::config::ADMIN_IN_CAPSULE_DATA as usize
            } else {
                0
            }),
            slots: RefCell::new((0..slots).map(|_| Slot::default()).collect()),
            // Popped from the end: CID 0 goes first.
            free: RefCell::new((0..slots as u16).rev().collect()),
            sem: Semaphore::new(slots as u64),
            idx_bits: idx_bits.max(1),
            tx: RefCell::new(Vec::with_capacity(RX_BUF_LEN)),
            tx_waker: Cell::new(None),
            writer_busy: Cell::new(false),
            failed: RefCell::new(None),
        });
        let reader = glommio::spawn_local(reader_task(conn.clone(), rx)).detach();
        glommio::spawn_local(writer_task(conn.clone())).detach();
        let queue = Queue {
            h: Rc::new(Handle {
                conn,
                reader: RefCell::new(Some(reader)),
                cntlid: Cell::new(cntlid),
            }),
        };

        let mut sqe = Sqe::default();
        sqe.set_opcode(admin::FABRICS).set_fctype(fctype::CONNECT);
        ConnectCmd {
            recfmt: 0,
            qid,
            sqsize: qsize - 1,
            cattr: if cfg.disable_sqflow {
                CATTR_DISABLE_SQ_FLOW
            } else {
                0
            },
            kato_ms: if qid == 0 { cfg.kato_ms } else { 0 },
        }
        .encode(&mut sqe);
        let data = ConnectData {
            hostid: cfg.hostid,
            cntlid,
            subnqn: cfg.subnqn.clone(),
            hostnqn: cfg.hostnqn.clone(),
        }
        .encode();
        let c = queue.h.conn.submit(sqe, Some(&data), 0, None, true).await?;
        let got = c.cqe.dw0 as u16;
        if qid == 0 {
            queue.h.cntlid.set(got);
        }
        Ok((queue, got))
    }

    /// Sends a command and waits for its completion.
    ///
    /// The CID is chosen here (the SQE's is overwritten), as are PSDT and the
    /// SGL. `data_out` (at most one of `data_out` and `data_in_len`) goes in
    /// the capsule when it fits the in-capsule limit, else is sent in
    /// H2CData PDUs as the target asks with R2Ts. `data_in_len` bytes come
    /// back in C2HData PDUs into [`Completion::data`]. A non-success status is
    /// `Err(HostError::Status)`. Waits while `queue_size - 1` commands are in
    /// flight. Dropping the future after the command was sent keeps its CID
    /// reserved until the target completes it.
    pub async fn submit(
        &self,
        sqe: Sqe,
        data_out: Option<&[u8]>,
        data_in_len: usize,
    ) -> Result<Completion, HostError> {
        self.h
            .conn
            .submit(sqe, data_out, data_in_len, None, false)
            .await
    }

    /// As [`Queue::submit`] for a command reading `buf.len()` bytes into
    /// `buf`, which comes back filled in [`Completion::data`]: reusing one
    /// buffer per task makes steady-state reads allocation-free.
    pub async fn submit_into(&self, sqe: Sqe, buf: Vec<u8>) -> Result<Completion, HostError> {
        let len = buf.len();
        self.h.conn.submit(sqe, None, len, Some(buf), false).await
    }

    /// Sets the largest data sent in the capsule (I/O queues: IOCCSZ × 16 − 64
    /// from Identify Controller; starts at 0, or 8192 on the admin queue).
    pub fn set_in_capsule_limit(&self, bytes: usize) {
        self.h.conn.in_capsule_limit.set(bytes);
    }

    /// Current in-capsule data limit in bytes.
    pub fn in_capsule_limit(&self) -> usize {
        self.h.conn.in_capsule_limit.get()
    }

    /// MAXH2CDATA from ICResp: the largest H2CData payload the target takes.
    pub fn maxh2cdata(&self) -> u32 {
        self.h.conn.maxh2cdata
    }

    /// Negotiated digests.
    pub fn digests(&self) -> Digests {
        self.h.conn.digests
    }

    /// Queue ID.
    pub fn qid(&self) -> u16 {
        self.h.conn.qid
    }

    /// Controller ID (from the Connect response on the admin queue).
    pub fn cntlid(&self) -> u16 {
        self.h.cntlid.get()
    }

    /// Entries of this queue (at most `queue_size - 1` commands in flight).
    pub fn queue_size(&self) -> u16 {
        self.h.conn.queue_size
    }

    /// True once the connection is down; [`Queue::error`] says why.
    pub fn is_closed(&self) -> bool {
        self.h.conn.is_failed()
    }

    /// Why the connection is down (`None` while it is up).
    pub fn error(&self) -> Option<HostError> {
        self.h.conn.check().err()
    }

    /// Shuts the socket down, fails every waiting command with
    /// `HostError::Closed` and waits for the reader task to end.
    pub async fn close(&self) {
        self.h.conn.close();
        let reader = self.h.reader.borrow_mut().take();
        if let Some(r) = reader {
            r.await;
        }
    }

    pub(crate) fn downgrade(&self) -> WeakQueue {
        WeakQueue(Rc::downgrade(&self.h))
    }
}

impl std::fmt::Debug for Queue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Queue")
            .field("qid", &self.qid())
            .field("cntlid", &self.cntlid())
            .field("closed", &self.is_closed())
            .finish()
    }
}
