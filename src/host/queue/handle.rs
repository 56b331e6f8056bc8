//! A host queue's handle: connecting it (ICReq/ICResp, Fabrics Connect,
//! the reader and writer tasks), submitting on it, closing it.

use super::*;

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
    rx.read_into(&mut h[..CH_LEN]).await.map_err(eof)?;
    let ch = CommonHeader::decode(&h);
    let l = layout(ch, Direction::ControllerToHost, Digests::default(), 0)
        .map_err(|e| HostError::Protocol(format!("bad ICResp header {ch:?}: {e:?}")))?;
    match ch.pdu_type {
        pdu_type::IC_RESP => {}
        pdu_type::C2H_TERM_REQ => {
            rx.read_into(&mut h[CH_LEN..l.hlen]).await.map_err(eof)?;
            return Err(HostError::TermReq(decode_term_req(&h)));
        }
        t => {
            return Err(HostError::Protocol(format!(
                "expected ICResp, got PDU type {t:#x}"
            )))
        }
    }
    rx.read_into(&mut h[CH_LEN..IC_HLEN]).await.map_err(eof)?;
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
        let mut rx = new_rx(stream.clone(), cfg.idle_poll);
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
            tx: RefCell::new(Vec::with_capacity(TX_BUF_LEN)),
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
