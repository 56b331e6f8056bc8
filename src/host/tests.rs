//! Tests of the host against fake targets written here: each test runs a
//! glommio executor with a listener on 127.0.0.1:0 and a task that plays the
//! target PDU by PDU with the `wire` encoders.
//! (Over 700 lines: each fake target is a short script, and they share the
//! helpers at the top; split by topic they would repeat them.)

use super::*;
use crate::wire::command::{admin, fctype, io as nvm, sgl, Cqe, Sqe};
use crate::wire::fabrics::{cc, csts, property, ConnectCmd, ConnectData, PropertyCmd};
use crate::wire::identify;
use crate::wire::log_page::{self, GetLogPage};
use crate::wire::pdu::{
    self, fes, flags, pdu_type, CommonHeader, DataHeader, Digests, Direction, FatalError, IcReq,
    IcResp,
};
use crate::wire::status::Status;
use byteorder::{ByteOrder, LittleEndian as LE};
use futures_lite::future::or;
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::{TcpListener, TcpStream};
use glommio::timer::sleep;
use std::future::Future;
use std::time::Duration;

const BOTH: Digests = Digests {
    header: true,
    data: true,
};

fn run<G, F>(g: G)
where
    G: FnOnce() -> F + Send + 'static,
    F: Future<Output = ()> + 'static,
{
    glommio::LocalExecutorBuilder::default()
        .spawn(g)
        .unwrap()
        .join()
        .unwrap();
}

fn listener() -> (TcpListener, std::net::SocketAddr) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let a = l.local_addr().unwrap();
    (l, a)
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 8) as u8)
        .collect()
}

fn read_sqe(len_seed: u32) -> Sqe {
    let mut sqe = Sqe::default();
    sqe.set_opcode(nvm::READ).set_nsid(1).set_cdw(10, len_seed);
    sqe
}

/// A received PDU: header (without digest) and data (without padding/digest).
struct Pdu {
    ch: CommonHeader,
    hdr: Vec<u8>,
    data: Vec<u8>,
}

impl Pdu {
    fn sqe(&self) -> Sqe {
        assert_eq!(self.ch.pdu_type, pdu_type::CAPSULE_CMD);
        Sqe::from_slice(&self.hdr[8..72])
    }
}

/// The target side of one connection.
struct Fake {
    s: TcpStream,
    d: Digests,
    /// Data alignment the host asked for (HPDA) and the one we asked (CPDA).
    hpda: usize,
    cpda: usize,
}

impl Fake {
    async fn accept(l: &TcpListener, cpda: u8, maxh2cdata: u32) -> Fake {
        let mut s = l.accept().await.unwrap();
        s.set_nodelay(true).unwrap();
        let mut b = [0u8; pdu::IC_HLEN];
        s.read_exact(&mut b).await.unwrap();
        let ch = CommonHeader::decode(&b);
        pdu::layout(ch, Direction::HostToController, Digests::default(), 0).unwrap();
        assert_eq!(ch.pdu_type, pdu_type::IC_REQ);
        let req = IcReq::decode(&b);
        assert_eq!((req.pfv, req.maxr2t), (0, 0));
        let resp = IcResp {
            pfv: 0,
            cpda,
            digests: req.digests,
            maxh2cdata,
        };
        s.write_all(&resp.encode()).await.unwrap();
        Fake {
            s,
            d: req.digests,
            hpda: (usize::from(req.hpda) + 1) * 4,
            cpda: (usize::from(cpda) + 1) * 4,
        }
    }

    /// The next PDU, checked for layout, alignment and digests; `None` at EOF.
    async fn try_recv(&mut self) -> Option<Pdu> {
        let mut hdr = vec![0u8; pdu::CH_LEN];
        if self.s.read_exact(&mut hdr).await.is_err() {
            return None;
        }
        let ch = CommonHeader::decode(&hdr);
        let l = pdu::layout(ch, Direction::HostToController, self.d, 1 << 20).unwrap();
        hdr.resize(l.header_total(), 0);
        self.s.read_exact(&mut hdr[pdu::CH_LEN..]).await.unwrap();
        if l.hdgst {
            let got = LE::read_u32(&hdr[l.hlen..]);
            assert_eq!(got, pdu::digest(&hdr[..l.hlen]), "header digest");
        }
        let mut data = Vec::new();
        if l.data_len > 0 {
            if ch.pdu_type != pdu_type::H2C_TERM_REQ {
                assert_eq!(l.pdo % self.cpda, 0, "data not at CPDA alignment");
            }
            let mut pad = vec![0u8; l.pad_len()];
            self.s.read_exact(&mut pad).await.unwrap();
            data.resize(l.data_len, 0);
            self.s.read_exact(&mut data).await.unwrap();
            if l.ddgst {
                let mut d = [0u8; 4];
                self.s.read_exact(&mut d).await.unwrap();
                assert_eq!(u32::from_le_bytes(d), pdu::digest(&data), "data digest");
            }
        }
        hdr.truncate(l.hlen);
        Some(Pdu { ch, hdr, data })
    }

    async fn recv(&mut self) -> Pdu {
        self.try_recv().await.expect("host closed the connection")
    }

    async fn recv_cmd(&mut self) -> (Sqe, Vec<u8>) {
        let p = self.recv().await;
        (p.sqe(), p.data)
    }

    /// True when no PDU arrives within 100 ms.
    async fn quiet(&mut self) -> bool {
        or(async { self.try_recv().await.is_none() }, async {
            sleep(Duration::from_millis(100)).await;
            true
        })
        .await
    }

    async fn send(&mut self, b: &[u8]) {
        self.s.write_all(b).await.unwrap();
    }

    /// Writes `b` in pieces of odd sizes with pauses, so that the host sees
    /// PDUs split anywhere.
    async fn send_split(&mut self, b: &[u8]) {
        const SIZES: [usize; 9] = [1, 3, 7, 2, 29, 333, 1001, 4099, 5];
        let mut at = 0;
        for n in SIZES.iter().cycle() {
            if at == b.len() {
                break;
            }
            let n = (*n).min(b.len() - at);
            self.s.write_all(&b[at..at + n]).await.unwrap();
            self.s.flush().await.unwrap();
            sleep(Duration::from_micros(200)).await;
            at += n;
        }
    }

    fn resp(&self, cid: u16, status: Status, dw0: u32, dw1: u32) -> Vec<u8> {
        let cqe = Cqe {
            dw0,
            dw1,
            sqhd: 0,
            sqid: 0,
            cid,
            status,
        };
        let mut v = Vec::new();
        pdu::encode_capsule_resp(&cqe.encode(), self.d, &mut v);
        v
    }

    async fn reply(&mut self, cid: u16, status: Status, dw0: u32) {
        let r = self.resp(cid, status, dw0, 0);
        self.send(&r).await;
    }

    fn c2h(&self, cid: u16, offset: usize, data: &[u8], f: u8) -> Vec<u8> {
        let dh = DataHeader {
            cccid: cid,
            ttag: 0,
            offset: offset as u32,
            length: data.len() as u32,
        };
        let mut v = Vec::new();
        pdu::encode_data_header_aligned(pdu_type::C2H_DATA, dh, f, self.d, self.hpda, &mut v);
        v.extend_from_slice(data);
        if self.d.data {
            v.extend_from_slice(&pdu::digest(data).to_le_bytes());
        }
        v
    }

    fn r2t(&self, cid: u16, ttag: u16, offset: usize, len: usize) -> Vec<u8> {
        let dh = DataHeader {
            cccid: cid,
            ttag,
            offset: offset as u32,
            length: len as u32,
        };
        let mut v = Vec::new();
        pdu::encode_r2t(dh, self.d, &mut v);
        v
    }

    /// Answers a Connect for `qid` with `cntlid` in DW0.
    async fn connect(&mut self, qid: u16, cntlid: u16) -> (ConnectCmd, ConnectData) {
        let (sqe, data) = self.recv_cmd().await;
        assert_eq!(
            (sqe.opcode(), sqe.fctype()),
            (admin::FABRICS, fctype::CONNECT)
        );
        assert_eq!(sqe.sgl().id, sgl::DATA_BLOCK_OFFSET);
        assert_eq!(sqe.sgl().length, 1024);
        assert_eq!(sqe.flags() & 0xC0, 0x40, "PSDT: SGL");
        let c = ConnectCmd::decode(&sqe);
        assert_eq!(c.qid, qid);
        let d = ConnectData::decode(&data).unwrap();
        self.reply(sqe.cid(), Status::SUCCESS, u32::from(cntlid))
            .await;
        (c, d)
    }
}

#[test]
fn hostnqn_is_a_uuid() {
    assert_eq!(
        uuid_hostnqn(&[0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef, 0, 1, 2, 3, 4, 5, 6, 0xff]),
        "nqn.2014-08.org.nvmexpress:uuid:01234567-89ab-cdef-0001-0203040506ff"
    );
    let c = HostConfig::new("127.0.0.1:4420".parse().unwrap(), "nqn.x");
    assert_eq!(c.hostnqn.len(), 32 + 36);
}

/// C2HData reassembly (split PDUs, HPDA padding, digests, SUCCESS flag),
/// R2T/H2CData (split at MAXH2CDATA, CPDA padding), in-capsule data and
/// status errors on one I/O queue.
#[test]
fn data_paths_with_digests_padding_and_odd_splits() {
    run(|| async {
        let (l, addr) = listener();
        let target = glommio::spawn_local(async move {
            let mut t = Fake::accept(&l, 1, 8192).await;
            let (c, d) = t.connect(1, 5).await;
            assert_eq!((c.sqsize, c.kato_ms), (7, 0));
            assert_eq!(d.cntlid, 5);
            assert_eq!(d.subnqn, "nqn.test:sub");
            assert_eq!(d.hostnqn, uuid_hostnqn(&DEFAULT_HOSTID));
            assert_eq!(d.hostid, DEFAULT_HOSTID);

            // Read of 10000 bytes: two C2HData split at 3333, then CapsuleResp.
            let (sqe, data) = t.recv_cmd().await;
            assert_eq!(sqe.opcode(), nvm::READ);
            assert!(data.is_empty());
            assert_eq!(sqe.sgl().id, sgl::TRANSPORT_DATA_BLOCK);
            assert_eq!(sqe.sgl().length, 10000);
            let buf = pattern(10000, 1);
            let mut b = t.c2h(sqe.cid(), 0, &buf[..3333], 0);
            b.extend(t.c2h(sqe.cid(), 3333, &buf[3333..], flags::LAST_PDU));
            b.extend(t.resp(sqe.cid(), Status::SUCCESS, 0, 0));
            t.send_split(&b).await;

            // Read completed by the SUCCESS flag, no CapsuleResp.
            let (sqe, _) = t.recv_cmd().await;
            let f = flags::LAST_PDU | flags::SUCCESS;
            let b = t.c2h(sqe.cid(), 0, &pattern(5000, 2), f);
            t.send_split(&b).await;

            // Write of 20000 bytes through two R2Ts.
            let (sqe, data) = t.recv_cmd().await;
            assert_eq!(sqe.opcode(), nvm::WRITE);
            assert!(data.is_empty());
            assert_eq!(sqe.sgl().id, sgl::TRANSPORT_DATA_BLOCK);
            assert_eq!(sqe.sgl().length, 20000);
            assert_eq!(sqe.nlb(), 39);
            let mut got = Vec::new();
            for (ttag, off, len, pieces) in [
                (3u16, 0, 12000, &[8192, 3808][..]),
                (4, 12000, 8000, &[8000]),
            ] {
                let r = t.r2t(sqe.cid(), ttag, off, len);
                t.send(&r).await;
                let mut at = off;
                for (i, n) in pieces.iter().enumerate() {
                    let p = t.recv().await;
                    assert_eq!(p.ch.pdu_type, pdu_type::H2C_DATA);
                    let dh = DataHeader::decode(&p.hdr);
                    assert_eq!(
                        (dh.cccid, dh.ttag, dh.offset as usize, dh.length as usize),
                        (sqe.cid(), ttag, at, *n)
                    );
                    let last = p.ch.flags & flags::LAST_PDU != 0;
                    assert_eq!(last, i == pieces.len() - 1);
                    got.extend_from_slice(&p.data);
                    at += n;
                }
            }
            assert_eq!(got, pattern(20000, 3));
            t.reply(sqe.cid(), Status::SUCCESS, 0).await;

            // In-capsule write with FUA.
            let (sqe, data) = t.recv_cmd().await;
            assert_eq!(sqe.sgl().id, sgl::DATA_BLOCK_OFFSET);
            assert_eq!(sqe.sgl().length, 1024);
            assert!(sqe.fua());
            assert_eq!(data, pattern(1024, 4));
            t.reply(sqe.cid(), Status::SUCCESS, 0).await;

            // A read that fails.
            let (sqe, _) = t.recv_cmd().await;
            assert_eq!(sqe.slba(), 1 << 40);
            t.reply(sqe.cid(), Status::LBA_OUT_OF_RANGE, 0).await;
            assert!(t.try_recv().await.is_none(), "host closes");
        });

        let mut cfg = HostConfig::new(addr, "nqn.test:sub");
        cfg.digests = BOTH;
        cfg.hpda = 1;
        cfg.queue_size = 8;
        let (q, cntlid) = Queue::connect(&cfg, 1, 5).await.unwrap();
        assert_eq!(cntlid, 5);
        assert_eq!(q.digests(), BOTH);
        assert_eq!(q.maxh2cdata(), 8192);
        assert_eq!(q.in_capsule_limit(), 0);
        let io = IoQueue::new(q.clone(), None);

        let c = q.submit(read_sqe(0), None, 10000).await.unwrap();
        assert_eq!(c.data, pattern(10000, 1));
        let c = q.submit_into(read_sqe(0), vec![0xEE; 5000]).await.unwrap();
        assert_eq!(c.data, pattern(5000, 2));
        assert!(c.cqe.status.is_success());
        io.write(1, 0, &pattern(20000, 3), 500, false)
            .await
            .unwrap();
        q.set_in_capsule_limit(4096);
        io.write(1, 0, &pattern(1024, 4), 512, true).await.unwrap();
        let e = io.read(1, 1 << 40, 1, 512).await.unwrap_err();
        assert_eq!(e.status(), Some(Status::LBA_OUT_OF_RANGE), "{e}");

        q.close().await;
        assert!(q.is_closed());
        assert!(matches!(
            q.submit(read_sqe(0), None, 1).await,
            Err(HostError::Closed)
        ));
        target.await;
    });
}

/// At most queue_size - 1 commands in flight; completions out of order.
#[test]
fn in_flight_bounded_and_completed_out_of_order() {
    run(|| async {
        let (l, addr) = listener();
        let target = glommio::spawn_local(async move {
            let mut t = Fake::accept(&l, 0, 65536).await;
            t.connect(1, 1).await;
            for _ in 0..3 {
                let mut cmds = Vec::new();
                for _ in 0..3 {
                    cmds.push(t.recv_cmd().await.0);
                }
                assert!(t.quiet().await, "a 4th command while 3 are in flight");
                let mut cids: Vec<u16> = cmds.iter().map(|s| s.cid()).collect();
                cids.sort_unstable();
                cids.dedup();
                assert_eq!(cids.len(), 3);
                let mut b = Vec::new();
                for sqe in cmds.iter().rev() {
                    let len = sqe.sgl().length as usize;
                    let data = pattern(len, sqe.cdw(10) as u8);
                    b.extend(t.c2h(sqe.cid(), 0, &data, flags::LAST_PDU));
                    b.extend(t.resp(sqe.cid(), Status::SUCCESS, 0, 0));
                }
                t.send(&b).await;
            }
        });

        let mut cfg = HostConfig::new(addr, "nqn.test:sub");
        cfg.queue_size = 4;
        let (q, _) = Queue::connect(&cfg, 1, 1).await.unwrap();
        let tasks: Vec<_> = (0..9u32)
            .map(|i| {
                let q = q.clone();
                glommio::spawn_local(async move {
                    let len = 512 * (i as usize + 1);
                    let c = q.submit(read_sqe(i), None, len).await.unwrap();
                    assert_eq!(c.data, pattern(len, i as u8));
                })
            })
            .collect();
        for t in tasks {
            t.await;
        }
        target.await;
    });
}

/// With `idle_poll` the reader polls its socket: PDUs split anywhere, and
/// pauses longer than the window (then it sleeps on io_uring), arrive whole.
#[test]
fn polling_reader_reassembles_split_pdus() {
    run(|| async {
        let (l, addr) = listener();
        let target = glommio::spawn_local(async move {
            let mut t = Fake::accept(&l, 0, 65536).await;
            t.connect(1, 1).await;
            for i in 0..4u32 {
                let (sqe, _) = t.recv_cmd().await;
                let len = sqe.sgl().length as usize;
                let mut b = t.c2h(sqe.cid(), 0, &pattern(len, i as u8), flags::LAST_PDU);
                b.extend(t.resp(sqe.cid(), Status::SUCCESS, 0, 0));
                if i % 2 == 0 {
                    t.send_split(&b).await;
                } else {
                    sleep(Duration::from_millis(5)).await;
                    t.send(&b).await;
                }
            }
        });
        let mut cfg = HostConfig::new(addr, "nqn.test:sub");
        cfg.idle_poll = Duration::from_millis(1);
        let (q, _) = Queue::connect(&cfg, 1, 1).await.unwrap();
        for i in 0..4u32 {
            let len = 4096 * (i as usize + 1);
            let c = q.submit(read_sqe(i), None, len).await.unwrap();
            assert_eq!(c.data, pattern(len, i as u8));
        }
        q.close().await;
        target.await;
    });
}

/// A submit future dropped after sending keeps its CID until the target
/// completes it; the slot's next command gets a different CID.
#[test]
fn abandoned_command_keeps_its_slot() {
    run(|| async {
        let (l, addr) = listener();
        let target = glommio::spawn_local(async move {
            let mut t = Fake::accept(&l, 0, 65536).await;
            t.connect(1, 1).await;
            let (a, _) = t.recv_cmd().await;
            sleep(Duration::from_millis(100)).await;
            assert!(t.quiet().await, "slot reused while the target owns it");
            let b = t.c2h(a.cid(), 0, &pattern(64, 0), flags::LAST_PDU);
            t.send(&b).await;
            t.reply(a.cid(), Status::SUCCESS, 0).await;
            let (b, _) = t.recv_cmd().await;
            assert_ne!(a.cid(), b.cid());
            let d = t.c2h(b.cid(), 0, &pattern(64, 1), flags::LAST_PDU);
            t.send(&d).await;
            t.reply(b.cid(), Status::SUCCESS, 0).await;
        });

        let mut cfg = HostConfig::new(addr, "nqn.test:sub");
        cfg.queue_size = 2;
        let (q, _) = Queue::connect(&cfg, 1, 1).await.unwrap();
        let timed_out = or(
            async { q.submit(read_sqe(0), None, 64).await.is_err() },
            async {
                sleep(Duration::from_millis(20)).await;
                true
            },
        )
        .await;
        assert!(timed_out);
        let c = q.submit(read_sqe(1), None, 64).await.unwrap();
        assert_eq!(c.data, pattern(64, 1));
        target.await;
    });
}

/// Hostile PDUs: each closes the connection with an H2CTermReq and fails the
/// command with `Protocol`.
#[test]
fn hostile_pdus_close_the_connection() {
    #[derive(Clone, Copy, Debug)]
    enum Case {
        DataPastEnd,
        DataOutOfOrder,
        UnknownCid,
        R2tForRead,
        SuccessBeforeEnd,
        BadHeaderDigest,
    }
    run(|| async {
        for case in [
            Case::DataPastEnd,
            Case::DataOutOfOrder,
            Case::UnknownCid,
            Case::R2tForRead,
            Case::SuccessBeforeEnd,
            Case::BadHeaderDigest,
        ] {
            let (l, addr) = listener();
            let target = glommio::spawn_local(async move {
                let mut t = Fake::accept(&l, 0, 65536).await;
                t.connect(1, 1).await;
                let (sqe, _) = t.recv_cmd().await;
                let cid = sqe.cid();
                let (bad, want) = match case {
                    Case::DataPastEnd => (t.c2h(cid, 0, &[0; 9000], 0), fes::DATA_OUT_OF_RANGE),
                    Case::DataOutOfOrder => (t.c2h(cid, 512, &[0; 512], 0), fes::DATA_OUT_OF_RANGE),
                    Case::UnknownCid => (
                        t.resp(cid ^ 0x8000, Status::SUCCESS, 0, 0),
                        fes::INVALID_HEADER_FIELD,
                    ),
                    Case::R2tForRead => (t.r2t(cid, 0, 0, 512), fes::INVALID_HEADER_FIELD),
                    Case::SuccessBeforeEnd => (
                        t.c2h(cid, 0, &[0; 512], flags::LAST_PDU | flags::SUCCESS),
                        fes::INVALID_HEADER_FIELD,
                    ),
                    Case::BadHeaderDigest => {
                        let mut r = t.resp(cid, Status::SUCCESS, 0, 0);
                        r[25] ^= 1;
                        (r, fes::HEADER_DIGEST_ERROR)
                    }
                };
                t.send(&bad).await;
                let p = t.recv().await;
                assert_eq!(p.ch.pdu_type, pdu_type::H2C_TERM_REQ, "{case:?}");
                assert_eq!(pdu::decode_term_req(&p.hdr).fes, want, "{case:?}");
                assert_eq!(&p.data[..], &bad[..p.data.len()], "offending header");
                assert!(t.try_recv().await.is_none(), "{case:?}: host closes");
            });

            let mut cfg = HostConfig::new(addr, "nqn.test:sub");
            cfg.digests = BOTH;
            let (q, _) = Queue::connect(&cfg, 1, 1).await.unwrap();
            let e = q.submit(read_sqe(0), None, 8192).await.unwrap_err();
            assert!(matches!(e, HostError::Protocol(_)), "{case:?}: {e}");
            assert!(q.is_closed());
            let e = q.submit(read_sqe(0), None, 1).await.unwrap_err();
            assert!(matches!(e, HostError::Protocol(_)), "{case:?}: {e}");
            target.await;
        }
    });
}

/// A C2HTermReq fails waiting commands with `TermReq`; a data digest error
/// fails only its command.
#[test]
fn term_req_and_data_digest_error() {
    run(|| async {
        let (l, addr) = listener();
        let target = glommio::spawn_local(async move {
            let mut t = Fake::accept(&l, 0, 65536).await;
            t.connect(1, 1).await;
            let (sqe, _) = t.recv_cmd().await;
            let mut b = t.c2h(sqe.cid(), 0, &pattern(100, 0), flags::LAST_PDU);
            let n = b.len();
            b[n - 5] ^= 0xFF; // last data byte: the data digest no longer matches
            b.extend(t.resp(sqe.cid(), Status::SUCCESS, 0, 0));
            t.send(&b).await;
            let (sqe, _) = t.recv_cmd().await;
            let c = t.c2h(sqe.cid(), 0, &pattern(100, 0), flags::LAST_PDU);
            t.send(&c).await;
            t.reply(sqe.cid(), Status::SUCCESS, 0).await;
            let _ = t.recv_cmd().await;
            let mut term = Vec::new();
            let err = FatalError::new(fes::INVALID_HEADER_FIELD, 2);
            pdu::encode_term_req(pdu_type::C2H_TERM_REQ, err, &[1; 24], &mut term);
            t.send(&term).await;
            assert!(t.try_recv().await.is_none());
        });
        let mut cfg = HostConfig::new(addr, "nqn.test:sub");
        cfg.digests = BOTH;
        let (q, _) = Queue::connect(&cfg, 1, 1).await.unwrap();
        let e = q.submit(read_sqe(0), None, 100).await.unwrap_err();
        assert!(
            matches!(&e, HostError::Protocol(m) if m.contains("digest")),
            "{e}"
        );
        assert!(!q.is_closed());
        let c = q.submit(read_sqe(0), None, 100).await.unwrap();
        assert_eq!(c.data, pattern(100, 0));
        let e = q.submit(read_sqe(0), None, 100).await.unwrap_err();
        assert!(
            matches!(e, HostError::TermReq(f) if f == FatalError::new(fes::INVALID_HEADER_FIELD, 2)),
            "{e}"
        );
        target.await;
    });
}

/// The admin side of a fake controller: answers until the host hangs up.
/// Returns (keep alives seen, shutdown requested).
async fn fake_admin(mut t: Fake) -> (usize, bool) {
    let (c, d) = t.connect(0, 9).await;
    assert_eq!(d.cntlid, 0xFFFF);
    assert_eq!((c.sqsize, c.kato_ms), (31, 200));
    let mut cc_val = 0u32;
    let mut keep_alives = 0;
    while let Some(p) = t.try_recv().await {
        let sqe = p.sqe();
        let cid = sqe.cid();
        let mut dw0 = 0u32;
        let mut dw1 = 0u32;
        let mut data = Vec::new();
        match sqe.opcode() {
            admin::FABRICS => {
                let pc = PropertyCmd::decode(&sqe);
                match (sqe.fctype(), pc.offset) {
                    (fctype::PROPERTY_GET, property::CAP) => {
                        assert!(pc.size8);
                        // MQES 63, TO 1 (500 ms), CSS NVM.
                        let cap: u64 = 63 | (1 << 24) | (1 << 37);
                        dw0 = cap as u32;
                        dw1 = (cap >> 32) as u32;
                    }
                    (fctype::PROPERTY_GET, property::VS) => dw0 = 0x10400,
                    (fctype::PROPERTY_GET, property::CC) => dw0 = cc_val,
                    (fctype::PROPERTY_GET, property::CSTS) => {
                        dw0 = cc_val & cc::EN;
                        if cc::shn(cc_val) != 0 {
                            dw0 |= csts::SHST_COMPLETE;
                        }
                    }
                    (fctype::PROPERTY_SET, property::CC) => {
                        cc_val = pc.value as u32;
                        assert_eq!(cc_val & cc::EN, 1);
                        assert_eq!((cc::iosqes(cc_val), cc::iocqes(cc_val)), (6, 4));
                    }
                    other => panic!("fabrics command {other:?}"),
                }
            }
            admin::IDENTIFY => {
                data = match (sqe.cdw(10) as u8, sqe.nsid()) {
                    (identify::cns::CONTROLLER, _) => {
                        identify::controller(&identify::ControllerInfo {
                            serial: "s".into(),
                            model: "m".into(),
                            firmware: "f".into(),
                            cntlid: 9,
                            version: 0x10400,
                            ctype: identify::ControllerType::Io,
                            mdts: 5,
                            maxcmd: 64,
                            nn: 2,
                            subnqn: "nqn.test:sub".into(),
                            kas: 1,
                            in_capsule_data: 4096,
                            volatile_write_cache: false,
                            acl: 0,
                            aerl: 0,
                            elpe: 0,
                        })
                    }
                    (identify::cns::NAMESPACE, 1) => {
                        identify::namespace(&identify::NamespaceInfo {
                            blocks: 1000,
                            used: 1000,
                            lbads: 9,
                            nguid: [0; 16],
                            eui64: [0; 8],
                            uuid: [0; 16],
                            dealloc_reads_zero: true,
                            thin: false,
                        })
                    }
                    (identify::cns::ACTIVE_NS_LIST, 0) => identify::active_ns_list(&[2, 1], 0),
                    other => panic!("identify {other:?}"),
                };
                assert_eq!(sqe.sgl().length as usize, data.len());
            }
            admin::GET_LOG_PAGE => {
                let g = GetLogPage::decode(&sqe);
                assert_eq!(g.lid, log_page::lid::DISCOVERY);
                let e = |subnqn: &str| log_page::DiscoveryEntry {
                    subtype: log_page::SUBTYPE_NVM,
                    portid: 1,
                    trsvcid: "4420".into(),
                    traddr: "127.0.0.1".into(),
                    subnqn: subnqn.into(),
                    asqsz: 32,
                };
                let page = log_page::discovery_log(7, &[e("nqn.a"), e("nqn.b")]);
                data = log_page::window(&page, g.offset, g.len).unwrap().to_vec();
                data.resize(g.len, 0);
            }
            admin::SET_FEATURES => {
                assert_eq!(sqe.cdw(10), 7);
                assert_eq!(sqe.cdw(11), 7 | (7 << 16));
                dw0 = 5 | (3 << 16);
            }
            admin::KEEP_ALIVE => keep_alives += 1,
            op => panic!("admin opcode {op:#x}"),
        }
        let mut b = Vec::new();
        if !data.is_empty() {
            b = t.c2h(cid, 0, &data, flags::LAST_PDU);
        }
        b.extend(t.resp(cid, Status::SUCCESS, dw0, dw1));
        t.send(&b).await;
    }
    (keep_alives, cc::shn(cc_val) == 1)
}

/// Controller bring-up, admin commands, an I/O queue and shutdown.
#[test]
fn controller_admin_and_io_queue() {
    run(|| async {
        let (l, addr) = listener();
        let target = glommio::spawn_local(async move {
            let admin = Fake::accept(&l, 0, 65536).await;
            let admin = glommio::spawn_local(fake_admin(admin));
            let mut t = Fake::accept(&l, 0, 65536).await;
            let (c, d) = t.connect(1, 9).await;
            assert_eq!(d.cntlid, 9);
            assert_eq!((c.sqsize, c.kato_ms), (63, 0), "queue size capped by MQES");

            let (sqe, data) = t.recv_cmd().await;
            assert_eq!(sqe.opcode(), nvm::WRITE);
            assert_eq!(sqe.sgl().id, sgl::DATA_BLOCK_OFFSET, "4 KiB fits IOCCSZ");
            assert_eq!((sqe.slba(), sqe.nlb()), (8, 7));
            assert_eq!(data, pattern(4096, 9));
            t.reply(sqe.cid(), Status::SUCCESS, 0).await;

            let (sqe, data) = t.recv_cmd().await;
            assert_eq!(sqe.opcode(), nvm::DATASET_MANAGEMENT);
            assert_eq!((sqe.cdw(10), sqe.cdw(11)), (1, 4));
            assert_eq!(data.len(), 32);
            assert_eq!(LE::read_u32(&data[4..8]), 5);
            assert_eq!(LE::read_u64(&data[8..16]), 10);
            assert_eq!(LE::read_u32(&data[20..24]), 1);
            assert_eq!(LE::read_u64(&data[24..32]), 100);
            t.reply(sqe.cid(), Status::SUCCESS, 0).await;

            let (sqe, _) = t.recv_cmd().await;
            assert_eq!((sqe.opcode(), sqe.nsid()), (nvm::FLUSH, 1));
            t.reply(sqe.cid(), Status::SUCCESS, 0).await;

            let (sqe, _) = t.recv_cmd().await;
            assert_eq!(sqe.opcode(), nvm::WRITE_ZEROES);
            assert_eq!((sqe.slba(), sqe.nlb()), (7, 2));
            t.reply(sqe.cid(), Status::SUCCESS, 0).await;

            let (sqe, data) = t.recv_cmd().await;
            assert_eq!(sqe.opcode(), nvm::COMPARE);
            assert_eq!(data.len(), 512);
            t.reply(sqe.cid(), Status::COMPARE_FAILURE, 0).await;
            assert!(t.try_recv().await.is_none());

            let (keep_alives, shut) = admin.await;
            assert!(keep_alives >= 2, "{keep_alives} keep alives");
            assert!(shut);
        });

        let mut cfg = HostConfig::new(addr, "nqn.test:sub");
        cfg.kato_ms = 200;
        let c = Controller::connect(cfg).await.unwrap();
        assert_eq!(c.cntlid, 9);
        assert_eq!(c.admin.cntlid(), 9);
        assert_eq!(c.vs, 0x10400);
        assert_eq!(c.mdts_bytes, Some(128 * 1024));
        assert_eq!(c.ioccsz_bytes, 4096);
        assert_eq!(c.io_queue_size, 64);
        assert_eq!(c.active_namespaces().await.unwrap(), vec![1, 2]);
        assert_eq!(c.namespace_geometry(1).await.unwrap(), (1000, 512));
        assert_eq!(c.set_number_of_queues(8).await.unwrap(), 4);
        let log = c.discovery_log().await.unwrap();
        let nqns: Vec<&str> = log.iter().map(|e| e.subnqn.as_str()).collect();
        assert_eq!(nqns, ["nqn.a", "nqn.b"]);
        c.keep_alive().await.unwrap();
        c.start_keep_alive();
        sleep(Duration::from_millis(250)).await;

        let io = c.connect_io_queue(1).await.unwrap();
        assert_eq!(io.queue.in_capsule_limit(), 4096);
        assert_eq!(io.queue.queue_size(), 64);
        io.write(1, 8, &pattern(4096, 9), 512, false).await.unwrap();
        io.deallocate(1, &[(10, 5), (100, 1)]).await.unwrap();
        io.flush(1).await.unwrap();
        io.write_zeroes(1, 7, 3).await.unwrap();
        let e = io.compare(1, 0, &[0; 512], 512).await.unwrap_err();
        assert_eq!(e.status(), Some(Status::COMPARE_FAILURE));
        assert!(matches!(
            io.read(1, 0, 0, 512).await,
            Err(HostError::Invalid(_))
        ));
        io.queue.close().await;
        c.shutdown().await.unwrap();
        assert!(c.admin.is_closed());
        target.await;
    });
}
