//! The send side of a connection: completions, R2Ts and a C2HTermReq from
//! the outbox leave in batches, each in as few vectored sends as the socket
//! takes; read data goes from its own buffer, split into C2HData PDUs of at
//! most the largest the target sends (NVMe/TCP 1.0 §3.6.2.8).

use super::readiness::Registration;
use super::socket::{self, SendPos};
use super::tcp::Conn;
use crate::nvme::Response;
use crate::storage::{Charge, DataBuf, SendPart};
use crate::wire::pdu::{self, flags, pdu_type, DataHeader, FatalError};
use futures_lite::io::WriteHalf;
use futures_lite::AsyncWriteExt;
use glommio::net::TcpStream;
use std::os::unix::io::RawFd;
use std::rc::Rc;

/// Send buffer capacity before it is flushed mid-batch.
const SEND_BUF_LEN: usize = 256 * 1024;

/// What the writer sends.
pub(super) enum Out {
    Done {
        cid: u16,
        resp: Response,
        /// Bytes the host's SGL can take.
        max_len: usize,
        /// The command's DMA memory, returned once this is sent.
        _charge: Option<Charge>,
    },
    R2T(DataHeader),
    Term(FatalError, Vec<u8>),
    /// A completion its command's task began to send (`send_inline`); the
    /// writer sends the rest before anything queued after it.
    Rest(Box<Encoded>),
}

impl Out {
    /// A RAM range's data stops holding its blocks (`DataBuf::release_hold`).
    pub(super) fn release_hold(&self) {
        match self {
            Out::Done {
                resp: Response { data: Some(d), .. },
                ..
            } => d.release_hold(),
            Out::Rest(e) => e.items.iter().for_each(Out::release_hold),
            _ => {}
        }
    }
}

/// The send half: non-blocking vectored sends; a full socket waits for room
/// (see `socket::send_all`).
pub(super) struct Sender {
    /// Shared with the reader: waits for room while the core polls. (First:
    /// fields drop in order, and it must leave epoll before `w` closes the
    /// socket.)
    pub(super) reg: Option<Rc<Registration>>,
    pub(super) fd: RawFd,
    pub(super) w: WriteHalf<TcpStream>,
}

impl Sender {
    async fn send<'p>(
        &mut self,
        pos: SendPos,
        count: usize,
        part: impl Fn(usize) -> SendPart<'p>,
        release: impl Fn(),
    ) -> std::io::Result<()> {
        socket::send_all(
            self.fd,
            &mut self.w,
            self.reg.as_deref(),
            pos,
            count,
            part,
            release,
        )
        .await
    }
}

/// A piece of a batch on the wire: bytes of the header buffer, or data of
/// one completion of the batch (sent from its own buffer, not copied).
enum Seg {
    Hdr(std::ops::Range<usize>),
    Data(usize, std::ops::Range<usize>),
}

/// Items on their way to the wire: their headers in `buf`, and the pieces
/// to send in order (`segs`: header bytes, or data of one of `items`).
#[derive(Default)]
pub(super) struct Encoded {
    items: Vec<Out>,
    buf: Vec<u8>,
    segs: Vec<Seg>,
    /// How much of it is sent.
    pos: SendPos,
}

impl Encoded {
    /// Encode the items; whether the connection closes once they are sent.
    fn encode(&mut self, conn: &Conn) -> bool {
        debug_assert!(self.buf.is_empty() && self.segs.is_empty());
        self.pos = SendPos::default();
        if conn.digests.data {
            // A data digest is computed here over the bytes: RAM disk ranges
            // are copied first so that the digest matches what is sent.
            for item in self.items.iter_mut() {
                if let Out::Done { resp, .. } = item {
                    resp.data = resp.data.take().map(DataBuf::owned);
                }
            }
        }
        let (mut closing, mut mark) = (false, 0);
        let (buf, segs) = (&mut self.buf, &mut self.segs);
        for (i, item) in self.items.iter().enumerate() {
            match item {
                Out::R2T(dh) => pdu::encode_r2t(*dh, conn.digests, buf),
                Out::Term(e, hdr) => {
                    pdu::encode_term_req(pdu_type::C2H_TERM_REQ, *e, hdr, buf);
                    closing = true;
                }
                Out::Done {
                    cid, resp, max_len, ..
                } => {
                    closing |= resp.close_after;
                    conn.q.completion_sent();
                    encode_done(conn, *cid, resp, *max_len, i, buf, segs, &mut mark);
                }
                Out::Rest(_) => unreachable!("a partly sent batch is sent on its own"),
            }
        }
        if buf.len() > mark {
            segs.push(Seg::Hdr(mark..buf.len()));
        }
        closing
    }

    /// Piece `k` of what is to be sent.
    fn part(&self, k: usize) -> SendPart<'_> {
        match &self.segs[k] {
            Seg::Hdr(r) => SendPart::Bytes(&self.buf[r.clone()]),
            Seg::Data(i, r) => match &self.items[*i] {
                Out::Done {
                    resp: Response { data: Some(d), .. },
                    ..
                } => d.part(r.clone()),
                _ => SendPart::Bytes(&[]),
            },
        }
    }

    /// Send all of it that is not sent yet.
    async fn send(&self, conn: &Conn, tx: &mut Sender) -> std::io::Result<()> {
        // Blocks of RAM disks stay held until sent; if the host makes the
        // send wait, let go of them, in this batch, in what is queued, and
        // in what is queued until the send is done (`Conn::complete`).
        let release = || {
            conn.out.set_stalled(true);
            self.items.iter().for_each(Out::release_hold);
            conn.out.for_each_queued(Out::release_hold);
        };
        let sent = tx
            .send(self.pos, self.segs.len(), |k| self.part(k), release)
            .await;
        conn.out.set_stalled(false);
        sent
    }

    fn clear(&mut self) {
        self.items.clear();
        self.buf.clear();
        self.segs.clear();
    }
}

/// The send side: drains the outbox in batches; each batch leaves in as few
/// vectored sends as the socket takes.
pub(super) async fn writer(conn: Rc<Conn>, mut tx: Sender) {
    let mut batch = Vec::new();
    let mut enc = Encoded {
        buf: Vec::with_capacity(SEND_BUF_LEN),
        ..Encoded::default()
    };
    let mut closing = false;
    while !closing && conn.out.next_batch(&mut batch).await {
        if let Some(Out::Rest(_)) = batch.first() {
            let Out::Rest(rest) = batch.remove(0) else {
                unreachable!()
            };
            if rest.send(&conn, &mut tx).await.is_err() {
                break;
            }
            if batch.is_empty() {
                continue;
            }
        }
        std::mem::swap(&mut enc.items, &mut batch);
        closing = enc.encode(&conn);
        let sent = enc.send(&conn, &mut tx).await;
        enc.clear();
        if sent.is_err() {
            break;
        }
    }
    let _ = tx.w.flush().await;
    let _ = tx.w.close().await;
    // A dead socket or a Disconnect ends the reader too.
    conn.kill.fire();
}

/// Send a completion from the task that made it, without waiting for the
/// writer (a hop through the executor's run queue: 1.1-1.4 µs of a file
/// read at QD1, measured). Only when nothing else is on its way: the
/// writer is idle, nothing is queued, and the socket takes it now.
/// What the socket did not take comes back, for the writer to send first.
pub(super) fn send_inline(conn: &Conn, fd: RawFd, item: Out, enc: &mut Encoded) -> Option<Out> {
    enc.items.push(item);
    let closing = enc.encode(conn);
    debug_assert!(!closing, "inline sends carry no close");
    let mut pos = SendPos::default();
    let done = socket::send_now(fd, &mut pos, enc.segs.len(), |k| enc.part(k));
    enc.pos = pos;
    match done {
        Ok(true) => {
            enc.clear();
            None
        }
        // The rest (or the error, again) is the writer's.
        Ok(false) | Err(_) => Some(Out::Rest(Box::new(std::mem::take(enc)))),
    }
}

/// A completion: C2HData PDUs for its data, then the CapsuleResp unless the
/// last C2HData carried SUCCESS. Headers go to `buf`; data is referenced.
#[allow(clippy::too_many_arguments)]
fn encode_done(
    conn: &Conn,
    cid: u16,
    resp: &Response,
    max_len: usize,
    item: usize,
    buf: &mut Vec<u8>,
    segs: &mut Vec<Seg>,
    mark: &mut usize,
) {
    let d = conn.digests;
    let sq_flow_disabled = conn.q.state.borrow().sq_flow_disabled;
    let mut skip_resp = false;
    if let (Some(data), true) = (&resp.data, resp.status.is_success()) {
        let total = data.len().min(max_len);
        let chunk = conn.shard.cfg.max_c2h_data as usize;
        let mut off = 0;
        while off < total {
            let n = chunk.min(total - off);
            let last = off + n == total;
            let mut f = 0;
            if last {
                f |= flags::LAST_PDU;
                if sq_flow_disabled {
                    f |= flags::SUCCESS;
                    skip_resp = true;
                }
            }
            pdu::encode_data_header_aligned(
                pdu_type::C2H_DATA,
                DataHeader {
                    cccid: cid,
                    ttag: 0,
                    offset: off as u32,
                    length: n as u32,
                },
                f,
                d,
                conn.pda,
                buf,
            );
            segs.push(Seg::Hdr(*mark..buf.len()));
            segs.push(Seg::Data(item, off..off + n));
            *mark = buf.len();
            if d.data {
                buf.extend_from_slice(&data.digest(off..off + n).to_le_bytes());
            }
            off += n;
        }
    }
    if !skip_resp {
        pdu::encode_capsule_resp(&conn.q.cqe(cid, resp), d, buf);
    }
}
