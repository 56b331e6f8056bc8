//! A host written byte by byte for the PDU stream tests: PDU builders, a
//! blocking peer that decodes (and digest-checks) what the target sends, and
//! the short sessions those tests start from.

use super::NQN;
use nvmf_tpc::wire::command::{admin, fctype, io, sgl, Cqe, SglDescriptor, Sqe};
use nvmf_tpc::wire::fabrics::{property, ConnectCmd, ConnectData, PropertyCmd};
use nvmf_tpc::wire::pdu::{self, flags, pdu_type, CommonHeader, DataHeader, Digests, IcReq};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

pub const HOSTNQN: &str = "nqn.2014-08.org.nvmexpress:uuid:00000000-0000-0000-0000-000000000001";

pub fn icreq(d: Digests) -> Vec<u8> {
    IcReq {
        pfv: 0,
        hpda: 0,
        digests: d,
        maxr2t: 0,
    }
    .encode()
    .to_vec()
}

/// PSDT 01b (SGLs), as every NVMe over Fabrics host sets it.
pub const PSDT_SGL: u8 = 0x40;

/// A capsule as a fabrics host sends it (PSDT set to SGL).
pub fn capsule(sqe: &Sqe, data: &[u8], d: Digests) -> Vec<u8> {
    let mut sqe = *sqe;
    sqe.set_flags(sqe.flags() | PSDT_SGL);
    capsule_raw(&sqe, data, d)
}

/// A capsule with the SQE's flags as they are.
pub fn capsule_raw(sqe: &Sqe, data: &[u8], d: Digests) -> Vec<u8> {
    let mut out = Vec::new();
    pdu::encode_capsule_cmd(&sqe.0, data.len(), d, &mut out);
    out.extend_from_slice(data);
    if d.data && !data.is_empty() {
        out.extend_from_slice(&pdu::digest(data).to_le_bytes());
    }
    out
}

pub fn connect(cid: u16, qid: u16, cntlid: u16, d: Digests) -> Vec<u8> {
    connect_sized(cid, qid, cntlid, 31, d)
}

pub fn connect_sized(cid: u16, qid: u16, cntlid: u16, sqsize: u16, d: Digests) -> Vec<u8> {
    capsule(&connect_sqe(cid, qid, sqsize, 0), &connect_data(cntlid), d)
}

pub fn connect_sqe(cid: u16, qid: u16, sqsize: u16, cattr: u8) -> Sqe {
    let mut sqe = Sqe::default();
    sqe.set_opcode(admin::FABRICS)
        .set_fctype(fctype::CONNECT)
        .set_cid(cid)
        .set_sgl(SglDescriptor {
            addr: 0,
            length: 1024,
            id: sgl::DATA_BLOCK_OFFSET,
        });
    ConnectCmd {
        recfmt: 0,
        qid,
        sqsize,
        cattr,
        kato_ms: if qid == 0 { 30_000 } else { 0 },
    }
    .encode(&mut sqe);
    sqe
}

pub fn connect_data(cntlid: u16) -> Vec<u8> {
    ConnectData {
        hostid: [1; 16],
        cntlid,
        subnqn: NQN.into(),
        hostnqn: HOSTNQN.into(),
    }
    .encode()
    .to_vec()
}

pub fn prop_set_cc(cid: u16, d: Digests) -> Vec<u8> {
    let mut sqe = Sqe::default();
    sqe.set_opcode(admin::FABRICS)
        .set_fctype(fctype::PROPERTY_SET)
        .set_cid(cid);
    PropertyCmd {
        size8: false,
        offset: property::CC,
        value: 1 | (6 << 16) | (4 << 20),
    }
    .encode(&mut sqe);
    capsule(&sqe, &[], d)
}

pub fn identify_ctrl(cid: u16, d: Digests) -> Vec<u8> {
    let mut sqe = Sqe::default();
    sqe.set_opcode(admin::IDENTIFY)
        .set_cid(cid)
        .set_cdw(10, 1)
        .set_sgl(SglDescriptor {
            addr: 0,
            length: 4096,
            id: sgl::TRANSPORT_DATA_BLOCK,
        });
    capsule(&sqe, &[], d)
}

pub fn write_icd(cid: u16, slba: u64, data: &[u8], d: Digests) -> Vec<u8> {
    let mut sqe = Sqe::default();
    sqe.set_opcode(io::WRITE)
        .set_cid(cid)
        .set_nsid(1)
        .set_cdw(10, slba as u32)
        .set_cdw(11, (slba >> 32) as u32)
        .set_cdw(12, (data.len() / 4096 - 1) as u32)
        .set_sgl(SglDescriptor {
            addr: 0,
            length: data.len() as u32,
            id: sgl::DATA_BLOCK_OFFSET,
        });
    capsule(&sqe, data, d)
}

pub fn flush_cmd(cid: u16, d: Digests) -> Vec<u8> {
    let mut sqe = Sqe::default();
    sqe.set_opcode(io::FLUSH).set_cid(cid).set_nsid(1);
    capsule(&sqe, &[], d)
}

pub fn read_cmd(cid: u16, slba: u64, blocks: u32, d: Digests) -> Vec<u8> {
    let mut sqe = Sqe::default();
    sqe.set_opcode(io::READ)
        .set_cid(cid)
        .set_nsid(1)
        .set_cdw(10, slba as u32)
        .set_cdw(12, blocks - 1)
        .set_sgl(SglDescriptor {
            addr: 0,
            length: blocks * 4096,
            id: sgl::TRANSPORT_DATA_BLOCK,
        });
    capsule(&sqe, &[], d)
}

/// A PDU as received by the host.
#[derive(Debug)]
pub enum Rx {
    IcResp,
    Resp(Cqe),
    Data(DataHeader, Vec<u8>, u8),
    R2T(DataHeader),
    Term(pdu::FatalError),
}

pub struct Peer {
    pub s: TcpStream,
    pub d: Digests,
}

impl Peer {
    pub fn open(addr: SocketAddr, d: Digests) -> Peer {
        let s = TcpStream::connect(addr).unwrap();
        s.set_nodelay(true).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        Peer { s, d }
    }

    pub fn send(&mut self, b: &[u8]) {
        self.s.write_all(b).unwrap();
    }

    /// Next PDU, or None at EOF.
    pub fn recv(&mut self) -> Option<Rx> {
        let mut ch = [0u8; 8];
        if self.s.read_exact(&mut ch).is_err() {
            return None;
        }
        let h = CommonHeader::decode(&ch);
        let digests = if h.pdu_type == pdu_type::IC_RESP || h.pdu_type == pdu_type::C2H_TERM_REQ {
            Digests::default()
        } else {
            self.d
        };
        let l = pdu::layout(h, pdu::Direction::ControllerToHost, digests, 1 << 24)
            .unwrap_or_else(|e| panic!("target sent a bad PDU header {h:?}: {e:?}"));
        let mut rest = vec![0u8; l.plen() - 8];
        self.s.read_exact(&mut rest).unwrap();
        let mut all = ch.to_vec();
        all.extend_from_slice(&rest);
        if l.hdgst {
            let want = u32::from_le_bytes(all[l.hlen..l.hlen + 4].try_into().unwrap());
            assert_eq!(pdu::digest(&all[..l.hlen]), want, "header digest");
        }
        Some(match h.pdu_type {
            pdu_type::IC_RESP => Rx::IcResp,
            pdu_type::CAPSULE_RESP => Rx::Resp(Cqe::decode(&all[8..24])),
            pdu_type::R2T => Rx::R2T(DataHeader::decode(&all)),
            pdu_type::C2H_TERM_REQ => Rx::Term(pdu::decode_term_req(&all)),
            pdu_type::C2H_DATA => {
                let data = all[l.pdo..l.pdo + l.data_len].to_vec();
                if l.ddgst {
                    let at = l.pdo + l.data_len;
                    let want = u32::from_le_bytes(all[at..at + 4].try_into().unwrap());
                    assert_eq!(pdu::digest(&data), want, "data digest");
                }
                Rx::Data(DataHeader::decode(&all), data, h.flags)
            }
            t => panic!("unexpected PDU type {t}"),
        })
    }

    pub fn expect_resp(&mut self) -> Cqe {
        match self.recv() {
            Some(Rx::Resp(c)) => c,
            other => panic!("expected CapsuleResp, got {other:?}"),
        }
    }

    pub fn expect_closed(&mut self) {
        let mut b = [0u8; 1];
        match self.s.read(&mut b) {
            Ok(0) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
            other => panic!("connection not closed: {other:?}"),
        }
    }
}

/// Admin session: ICReq, Connect, CC.EN=1, Identify Controller.
pub fn admin_session(d: Digests) -> Vec<u8> {
    let mut s = icreq(d);
    s.extend(connect(1, 0, 0xFFFF, d));
    s.extend(prop_set_cc(2, d));
    s.extend(identify_ctrl(3, d));
    s
}

pub fn check_admin_replies(p: &mut Peer) {
    assert!(matches!(p.recv(), Some(Rx::IcResp)));
    let c = p.expect_resp();
    assert!(c.status.is_success(), "connect: {c:?}");
    assert!(p.expect_resp().status.is_success());
    let mut got = Vec::new();
    loop {
        match p.recv() {
            Some(Rx::Data(dh, data, f)) => {
                assert_eq!(dh.offset as usize, got.len());
                got.extend(data);
                assert_eq!(f & flags::LAST_PDU != 0, got.len() == 4096);
            }
            Some(Rx::Resp(c)) => {
                assert!(c.status.is_success());
                assert_eq!(c.cid, 3);
                break;
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(got.len(), 4096);
    assert_eq!(&got[768..768 + NQN.len()], NQN.as_bytes());
}

/// Admin queue connected and enabled; returns its cntlid.
pub fn enabled_admin(addr: SocketAddr, d: Digests) -> (Peer, u16) {
    let mut a = Peer::open(addr, d);
    a.send(&icreq(d));
    a.send(&connect(1, 0, 0xFFFF, d));
    a.send(&prop_set_cc(2, d));
    assert!(matches!(a.recv(), Some(Rx::IcResp)));
    let c = a.expect_resp();
    assert!(c.status.is_success());
    assert!(a.expect_resp().status.is_success());
    (a, c.dw0 as u16)
}

pub fn term(p: &mut Peer) -> pdu::FatalError {
    loop {
        match p.recv() {
            Some(Rx::Term(e)) => {
                p.expect_closed();
                return e;
            }
            Some(Rx::Resp(_)) | Some(Rx::IcResp) | Some(Rx::R2T(_)) | Some(Rx::Data(..)) => {}
            None => panic!("closed without C2HTermReq"),
        }
    }
}

/// A write whose data the target asks for by R2T (Transport SGL).
pub fn write_r2t(cid: u16, slba: u64, blocks: u32, sgl_len: u32, d: Digests) -> Vec<u8> {
    let mut sqe = Sqe::default();
    sqe.set_opcode(io::WRITE)
        .set_cid(cid)
        .set_nsid(1)
        .set_cdw(10, slba as u32)
        .set_cdw(12, blocks - 1)
        .set_sgl(SglDescriptor {
            addr: 0,
            length: sgl_len,
            id: sgl::TRANSPORT_DATA_BLOCK,
        });
    capsule(&sqe, &[], d)
}

pub fn h2c(cccid: u16, ttag: u16, offset: u32, data: &[u8], d: Digests) -> Vec<u8> {
    let mut x = Vec::new();
    pdu::encode_data_header(
        pdu_type::H2C_DATA,
        DataHeader {
            cccid,
            ttag,
            offset,
            length: data.len() as u32,
        },
        flags::LAST_PDU,
        d,
        &mut x,
    );
    x.extend_from_slice(data);
    if d.data {
        x.extend_from_slice(&pdu::digest(data).to_le_bytes());
    }
    x
}

/// An I/O queue on its own connection, connected to `cntlid`.
pub fn io_peer(addr: SocketAddr, d: Digests, cntlid: u16, qid: u16, sqsize: u16) -> Peer {
    let mut p = Peer::open(addr, d);
    p.send(&icreq(d));
    p.send(&connect_sized(1, qid, cntlid, sqsize, d));
    assert!(matches!(p.recv(), Some(Rx::IcResp)));
    let c = p.expect_resp();
    assert!(c.status.is_success(), "I/O connect: {c:?}");
    p
}

pub fn expect_r2t(p: &mut Peer) -> DataHeader {
    match p.recv() {
        Some(Rx::R2T(h)) => h,
        other => panic!("expected R2T, got {other:?}"),
    }
}

/// I/O queue 1 of `cntlid` on a socket with a 4 KiB receive buffer: the
/// target's sends to it stall at once.
pub fn slow_reader(addr: SocketAddr, cntlid: u16, d: Digests) -> Peer {
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    sock.connect(&addr.into()).unwrap();
    let s: TcpStream = sock.into();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut p = Peer { s, d };
    p.send(&icreq(d));
    p.send(&connect_sized(1, 1, cntlid, 31, d));
    assert!(matches!(p.recv(), Some(Rx::IcResp)));
    assert!(p.expect_resp().status.is_success());
    p
}

/// Identify on the admin queue still answers: the target is up and this
/// core serves its other connections.
pub fn still_serving(admin: &mut Peer, cid: u16, d: Digests) {
    admin.send(&identify_ctrl(cid, d));
    loop {
        match admin.recv() {
            Some(Rx::Data(..)) => {}
            Some(Rx::Resp(c)) => {
                assert_eq!(c.cid, cid);
                assert!(c.status.is_success(), "{c:?}");
                return;
            }
            other => panic!("admin queue: {other:?}"),
        }
    }
}
